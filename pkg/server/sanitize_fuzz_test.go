package server

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"
)

// sanitizeTypes are the messages FuzzSanitize builds: every message of the CSI spec
// (requests and responses are logged) and Outer, whose secrets sit deeper.
func sanitizeTypes(f *testing.F) []protoreflect.MessageType {
	var types []protoreflect.MessageType
	msgs := csi.File_csi_proto.Messages()
	for i := range msgs.Len() {
		mt, err := protoregistry.GlobalTypes.FindMessageByName(msgs.Get(i).FullName())
		if err != nil {
			f.Fatal(err)
		}
		types = append(types, mt)
	}
	return append(types, dynamicpb.NewMessageType(nestedSecretsDescriptor(f)))
}

// withSecrets returns a copy of m in which every secret field, however deeply
// nested in the messages m holds, holds key=value (a map) or value (a string), and
// nothing else when replace is true; key=value is added to a map otherwise. Every
// volume_context holds the kubelet's service-account tokens, value.
func withSecrets(m proto.Message, key, value string, replace bool) proto.Message {
	c := proto.Clone(m)
	setSecrets(c.ProtoReflect(), key, value, replace)
	return c
}

func setSecrets(m protoreflect.Message, key, value string, replace bool) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		secret, _ := proto.GetExtension(fd.Options(), csi.E_CsiSecret).(bool)
		holdsMessages := fd.IsMap() && fd.MapValue().Kind() == protoreflect.MessageKind ||
			!fd.IsMap() && fd.Kind() == protoreflect.MessageKind
		switch {
		case secret && fd.IsMap() && fd.MapValue().Kind() == protoreflect.StringKind:
			if replace {
				m.Clear(fd)
			}
			m.Mutable(fd).Map().Set(protoreflect.ValueOfString(key).MapKey(), protoreflect.ValueOfString(value))
		case secret && fd.Kind() == protoreflect.StringKind && !fd.IsList():
			m.Set(fd, protoreflect.ValueOfString(value))
		case secret:
			panic("FuzzSanitize cannot fill secret field " + string(fd.FullName()))
		case fd.Name() == "volume_context":
			// The kubelet's service-account tokens (CSIDriver tokenRequests).
			m.Mutable(fd).Map().Set(protoreflect.ValueOfString(serviceAccountTokensKey).MapKey(), protoreflect.ValueOfString(value))
		case !m.Has(fd) || !holdsMessages:
		case fd.IsMap():
			m.Mutable(fd).Map().Range(func(_ protoreflect.MapKey, v protoreflect.Value) bool {
				setSecrets(v.Message(), key, value, replace)
				return true
			})
		case fd.IsList():
			l := m.Mutable(fd).List()
			for j := range l.Len() {
				setSecrets(l.Get(j).Message(), key, value, replace)
			}
		default:
			setSecrets(m.Mutable(fd).Message(), key, value, replace)
		}
	}
}

// FuzzSanitize: what the interceptor logs of a request or response does not depend
// on its secrets at all. Any message of the CSI spec (chosen by typ, decoded from
// data), with key=value added to every secret, however nested, sanitises to the same
// text as with every secret replaced by "k"="v"; that text is JSON.
func FuzzSanitize(f *testing.F) {
	types := sanitizeTypes(f)
	index := func(m proto.Message) uint16 {
		for i, mt := range types {
			if mt.Descriptor().FullName() == m.ProtoReflect().Descriptor().FullName() {
				return uint16(i)
			}
		}
		f.Fatalf("no type %T", m)
		return 0
	}
	seed := func(m proto.Message) {
		data, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(index(m), data, "password", secretValue)
	}
	seed(&csi.CreateVolumeRequest{Name: "pvc-1", Parameters: map[string]string{"pool": "fast"},
		Secrets: map[string]string{"user": "admin"}, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 62}})
	seed(&csi.NodeStageVolumeRequest{VolumeId: "vol-1", Secrets: map[string]string{"a": "b"},
		VolumeCapability: &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{
			Mount: &csi.VolumeCapability_MountVolume{MountFlags: []string{"ro"}}}}})
	seed(&csi.NodePublishVolumeRequest{VolumeId: "vol-1", TargetPath: "/t", Secrets: map[string]string{"": ""},
		VolumeContext: map[string]string{"csi.storage.k8s.io/pod.name": "web-0"}})
	seed(&csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: "vol-1", Secrets: map[string]string{secretValue: "x"}})
	seed(&csi.ListVolumesResponse{NextToken: "t", Entries: []*csi.ListVolumesResponse_Entry{{Volume: &csi.Volume{VolumeId: "v"}}}})
	outer := dynamicpb.NewMessage(types[len(types)-1].Descriptor())
	if err := protojson.Unmarshal([]byte(`{"inner": {"token": "s1", "name": "n1"},
		"list": [{"token": "s2"}, {"name": "n3"}], "by_name": {"k": {"token": "s4"}},
		"id": "vol-1", "creds": {"password": "s5"}}`), outer); err != nil {
		f.Fatal(err)
	}
	seed(outer)
	f.Fuzz(func(t *testing.T, typ uint16, data []byte, key, value string) {
		// gRPC refuses a string that is not UTF-8 before any interceptor sees it.
		if value == "" || !utf8.ValidString(key) || !utf8.ValidString(value) {
			return
		}
		m := types[int(typ)%len(types)].New().Interface()
		if proto.Unmarshal(data, m) != nil {
			return
		}
		got := Sanitize(withSecrets(m, key, value, false))
		if want := Sanitize(withSecrets(m, "k", "v", true)); got != want {
			t.Fatalf("%T: what is logged depends on its secrets:\n%s\n%s", m, got, want)
		}
		if !json.Valid([]byte(got)) && !strings.HasPrefix(got, "<unprintable ") {
			t.Fatalf("%T sanitised to %q, not JSON", m, got)
		}
	})
}
