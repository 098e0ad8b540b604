package server

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

const secretValue = "hunter2"

// decode parses Sanitize's output, failing the test if it is not JSON.
func decode(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("Sanitize output is not JSON: %v\n%s", err, s)
	}
	return m
}

func TestSanitizeCreateVolumeRequest(t *testing.T) {
	req := &csi.CreateVolumeRequest{
		Name:          "pvc-1",
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1<<62 + 1},
		Parameters:    map[string]string{"pool": "fast"},
		Secrets:       map[string]string{"password": secretValue},
	}
	got := Sanitize(req)
	if strings.Contains(got, secretValue) {
		t.Fatalf("secret leaked: %s", got)
	}
	m := decode(t, got)
	if m["secrets"] != strippedValue {
		t.Errorf("secrets = %v, want %q", m["secrets"], strippedValue)
	}
	if m["name"] != "pvc-1" {
		t.Errorf("name = %v, want pvc-1", m["name"])
	}
	if p, _ := m["parameters"].(map[string]any); p["pool"] != "fast" {
		t.Errorf("parameters = %v, want pool=fast", m["parameters"])
	}
	// 64-bit integers survive exactly, as protojson writes them.
	if !strings.Contains(got, `"required_bytes":"4611686018427387905"`) {
		t.Errorf("capacity_range lost precision: %s", got)
	}
}

func TestSanitizeNodeStageVolumeRequest(t *testing.T) {
	req := &csi.NodeStageVolumeRequest{
		VolumeId:          "vol-1",
		StagingTargetPath: "/var/lib/kubelet/staging/vol-1",
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{
				FsType: "xfs", MountFlags: []string{"noatime"},
			}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
		PublishContext: map[string]string{"device": "/dev/loop3"},
		Secrets:        map[string]string{"key": secretValue, "user": "admin"},
		VolumeContext:  map[string]string{"pool": "fast"},
	}
	got := Sanitize(req)
	if strings.Contains(got, secretValue) || strings.Contains(got, "admin") {
		t.Fatalf("secret leaked: %s", got)
	}
	m := decode(t, got)
	if m["secrets"] != strippedValue {
		t.Errorf("secrets = %v, want %q", m["secrets"], strippedValue)
	}
	for _, want := range []string{`"volume_id":"vol-1"`, `"fs_type":"xfs"`, `"mode":"SINGLE_NODE_WRITER"`,
		`"device":"/dev/loop3"`, `"staging_target_path":"/var/lib/kubelet/staging/vol-1"`} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %s: %s", want, got)
		}
	}
}

func TestSanitizeKeepsMessagesWithoutSecrets(t *testing.T) {
	resp := &csi.CreateVolumeResponse{Volume: &csi.Volume{
		VolumeId:      "vol-1",
		CapacityBytes: 1 << 30,
		VolumeContext: map[string]string{"pool": "fast"},
	}}
	want, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	var wantTree, gotTree any
	if err := json.Unmarshal(want, &wantTree); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(Sanitize(resp)), &gotTree); err != nil {
		t.Fatal(err)
	}
	wantJSON, _ := json.Marshal(wantTree)
	gotJSON, _ := json.Marshal(gotTree)
	if string(wantJSON) != string(gotJSON) {
		t.Errorf("Sanitize changed a message without secrets:\n got %s\nwant %s", gotJSON, wantJSON)
	}
}

func TestSanitizeNilAndEmpty(t *testing.T) {
	if got := Sanitize(nil); got != "null" {
		t.Errorf("Sanitize(nil) = %q", got)
	}
	if got := Sanitize((*csi.CreateVolumeRequest)(nil)); got != "{}" {
		t.Errorf("Sanitize(typed nil) = %q", got)
	}
	if got := Sanitize(&csi.CreateVolumeRequest{}); got != "{}" {
		t.Errorf("Sanitize(empty) = %q", got)
	}
}

// nestedSecretsDescriptor builds, at run time, messages whose secrets sit in a
// nested message, a list of messages and a map of messages:
//
//	message Inner { string token = 1 [(csi.v1.csi_secret) = true]; string name = 2; }
//	message Outer { Inner inner = 1; repeated Inner list = 2;
//	                map<string, Inner> by_name = 3; string id = 4;
//	                map<string, string> creds = 5 [(csi.v1.csi_secret) = true]; }
func nestedSecretsDescriptor(t testing.TB) protoreflect.MessageDescriptor {
	t.Helper()
	secret := &descriptorpb.FieldOptions{}
	proto.SetExtension(secret, csi.E_CsiSecret, true)
	str := descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()
	msg := descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum()
	opt := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
	rep := descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum()
	field := func(name string, num int32, label *descriptorpb.FieldDescriptorProto_Label,
		typ *descriptorpb.FieldDescriptorProto_Type, typeName string, opts *descriptorpb.FieldOptions) *descriptorpb.FieldDescriptorProto {
		f := &descriptorpb.FieldDescriptorProto{Name: proto.String(name), Number: proto.Int32(num),
			Label: label, Type: typ, Options: opts}
		if typeName != "" {
			f.TypeName = proto.String(typeName)
		}
		return f
	}
	entry := func(name, valueType string, typ *descriptorpb.FieldDescriptorProto_Type) *descriptorpb.DescriptorProto {
		return &descriptorpb.DescriptorProto{
			Name: proto.String(name),
			Field: []*descriptorpb.FieldDescriptorProto{
				field("key", 1, opt, str, "", nil),
				field("value", 2, opt, typ, valueType, nil),
			},
			Options: &descriptorpb.MessageOptions{MapEntry: proto.Bool(true)},
		}
	}
	fdp := &descriptorpb.FileDescriptorProto{
		Name:    proto.String("berth/server/sanitize_test.proto"),
		Package: proto.String("berth.test"),
		Syntax:  proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{
			{Name: proto.String("Inner"), Field: []*descriptorpb.FieldDescriptorProto{
				field("token", 1, opt, str, "", secret),
				field("name", 2, opt, str, "", nil),
			}},
			{
				Name: proto.String("Outer"),
				Field: []*descriptorpb.FieldDescriptorProto{
					field("inner", 1, opt, msg, ".berth.test.Inner", nil),
					field("list", 2, rep, msg, ".berth.test.Inner", nil),
					field("by_name", 3, rep, msg, ".berth.test.Outer.ByNameEntry", nil),
					field("id", 4, opt, str, "", nil),
					field("creds", 5, rep, msg, ".berth.test.Outer.CredsEntry", secret),
				},
				NestedType: []*descriptorpb.DescriptorProto{
					entry("ByNameEntry", ".berth.test.Inner", msg),
					entry("CredsEntry", "", str),
				},
			},
		},
	}
	fd, err := protodesc.NewFile(fdp, nil)
	if err != nil {
		t.Fatal(err)
	}
	return fd.Messages().ByName("Outer")
}

func TestSanitizeNestedSecrets(t *testing.T) {
	m := dynamicpb.NewMessage(nestedSecretsDescriptor(t))
	in := `{"inner": {"token": "s1", "name": "n1"},
		"list": [{"token": "s2", "name": "n2"}, {"name": "n3"}],
		"by_name": {"k": {"token": "s4", "name": "n4"}},
		"id": "vol-1",
		"creds": {"password": "s5"}}`
	if err := protojson.Unmarshal([]byte(in), m); err != nil {
		t.Fatal(err)
	}
	got := Sanitize(m)
	for _, s := range []string{`"s1"`, `"s2"`, `"s4"`, `"s5"`, "password"} {
		if strings.Contains(got, s) {
			t.Errorf("secret %s leaked: %s", s, got)
		}
	}
	for _, want := range []string{
		`"inner":{"name":"n1","token":"***stripped***"}`,
		`"list":[{"name":"n2","token":"***stripped***"},{"name":"n3"}]`,
		`"by_name":{"k":{"name":"n4","token":"***stripped***"}}`,
		`"creds":"***stripped***"`,
		`"id":"vol-1"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %s:\n%s", want, got)
		}
	}
}

// TestSanitizeServiceAccountTokens: the tokens the kubelet puts in volume_context
// when the CSIDriver has tokenRequests never reach a log; the rest of the context does.
func TestSanitizeServiceAccountTokens(t *testing.T) {
	tokens := `{"vault":{"token":"` + secretValue + `","expirationTimestamp":"2026-12-02T08:00:00Z"}}`
	for _, key := range []string{serviceAccountTokensKey, "CSI.storage.k8s.io/serviceaccount.TOKENS"} {
		req := &csi.NodePublishVolumeRequest{
			VolumeId: "csi-0123", TargetPath: "/var/lib/kubelet/pods/p/volumes/v/mount",
			VolumeContext: map[string]string{
				key: tokens, "csi.storage.k8s.io/pod.name": "web-0", "csi.storage.k8s.io/ephemeral": "true",
			},
			Secrets: map[string]string{"password": secretValue},
		}
		got := Sanitize(req)
		if strings.Contains(got, secretValue) {
			t.Fatalf("token leaked: %s", got)
		}
		vctx, _ := decode(t, got)["volume_context"].(map[string]any)
		if vctx[key] != strippedValue || vctx["csi.storage.k8s.io/pod.name"] != "web-0" {
			t.Errorf("volume_context = %v, want the tokens stripped and the pod name kept", vctx)
		}
	}
}
