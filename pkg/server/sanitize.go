package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// strippedValue replaces the value of every field marked as a CSI secret.
const strippedValue = "***stripped***"

// serviceAccountTokensKey is the volume_context key under which the kubelet passes
// the pod's service-account tokens to NodePublishVolume when the CSIDriver asks for
// them (spec.tokenRequests). volume_context is not a secret field, so the tokens are
// stripped by this key, in any string map.
const serviceAccountTokensKey = "csi.storage.k8s.io/serviceAccount.tokens"

var sanitizeMarshal = protojson.MarshalOptions{UseProtoNames: true}

// Sanitize renders m as JSON (protojson, with the proto field names) for logging,
// with the value of every field marked `(csi.v1.csi_secret) = true`, and of every
// string map's csi.storage.k8s.io/serviceAccount.tokens entry, replaced by
// "***stripped***", however deeply it is nested in messages, lists or maps.
func Sanitize(m proto.Message) string {
	if m == nil {
		return "null"
	}
	raw, err := sanitizeMarshal.Marshal(m)
	if err != nil {
		// Never fall back to printing the message itself: it may hold secrets.
		return fmt.Sprintf("<unprintable %T: %v>", m, err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // keep 64-bit integers and floats exactly as protojson wrote them
	var tree any
	if err := dec.Decode(&tree); err != nil {
		return fmt.Sprintf("<unprintable %T: %v>", m, err)
	}
	if obj, ok := tree.(map[string]any); ok {
		stripSecrets(obj, m.ProtoReflect().Descriptor())
	}

	var out strings.Builder
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(tree); err != nil {
		return fmt.Sprintf("<unprintable %T: %v>", m, err)
	}
	return strings.TrimSuffix(out.String(), "\n")
}

// stripSecrets walks obj, the JSON form of a message described by md, and
// replaces every secret field's value.
func stripSecrets(obj map[string]any, md protoreflect.MessageDescriptor) {
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		val, ok := obj[string(fd.Name())]
		if !ok {
			continue
		}
		if isSecret(fd) {
			obj[string(fd.Name())] = strippedValue
			continue
		}
		switch {
		case fd.IsMap() && fd.MapValue().Kind() == protoreflect.StringKind:
			entries, _ := val.(map[string]any)
			for k := range entries {
				if strings.EqualFold(k, serviceAccountTokensKey) {
					entries[k] = strippedValue
				}
			}
		case fd.IsMap():
			vd := fd.MapValue()
			if vd.Kind() != protoreflect.MessageKind {
				continue
			}
			entries, _ := val.(map[string]any)
			for _, e := range entries {
				stripMessage(e, vd.Message())
			}
		case fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind:
			if fd.IsList() {
				items, _ := val.([]any)
				for _, it := range items {
					stripMessage(it, fd.Message())
				}
				continue
			}
			stripMessage(val, fd.Message())
		}
	}
}

// stripMessage strips a nested message. Well-known types that protojson writes as
// scalars (wrappers, Timestamp, ...) are not JSON objects and hold no secrets.
func stripMessage(val any, md protoreflect.MessageDescriptor) {
	if obj, ok := val.(map[string]any); ok {
		stripSecrets(obj, md)
	}
}

// isSecret reports whether fd carries the option (csi.v1.csi_secret) = true.
func isSecret(fd protoreflect.FieldDescriptor) bool {
	opts := fd.Options()
	if opts == nil {
		return false
	}
	secret, ok := proto.GetExtension(opts, csi.E_CsiSecret).(bool)
	return ok && secret
}
