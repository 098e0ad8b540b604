package chart

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"net"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// snapshotMetadataObjects are what snapshotMetadata.enabled adds, by kind/name.
var snapshotMetadataObjects = []string{
	"DaemonSet/berth-snapshot-metadata", "Service/berth-snapshot-metadata",
	"ServiceAccount/berth-snapshot-metadata", "ClusterRole/berth-snapshot-metadata",
	"ClusterRoleBinding/berth-snapshot-metadata", "Secret/berth-snapshot-metadata-tls",
	"SnapshotMetadataService/berth.csi.io",
}

// TestSnapshotMetadataOffByDefault: without snapshotMetadata.enabled nothing of the
// external-snapshot-metadata sidecar is rendered (its CRD may be missing).
func TestSnapshotMetadataOffByDefault(t *testing.T) {
	docs := renderDocs(t, "")
	for _, key := range snapshotMetadataObjects {
		if _, ok := docs[key]; ok {
			t.Errorf("%s rendered with the defaults", key)
		}
	}
}

// TestSnapshotMetadataRendered: the sidecar runs on the selected nodes against the
// node plugin's socket on the host, with the certificate the object's CA signed for
// the Service's names and the extra SANs; the object names the Service (or the given
// address) and the audience the sidecar checks; the Service keeps clients on their
// own node; the sidecar may review tokens and access and read snapshots and classes.
func TestSnapshotMetadataRendered(t *testing.T) {
	docs := renderDocs(t, `snapshotMetadata:
  enabled: true
  nodeSelector: {berth.csi.io/reflink: "true"}
  extraSANs: [127.0.0.1, backup.example.com]
`)
	for _, key := range snapshotMetadataObjects {
		if _, ok := docs[key]; !ok {
			t.Fatalf("%s not rendered", key)
		}
	}
	var sms struct {
		Spec struct{ Address, Audience, CACert string }
	}
	mustUnmarshal(t, docs["SnapshotMetadataService/berth.csi.io"], &sms)
	if sms.Spec.Address != "berth-snapshot-metadata.kube-system:6443" || sms.Spec.Audience != "berth.csi.io" {
		t.Errorf("SnapshotMetadataService spec: address %q, audience %q", sms.Spec.Address, sms.Spec.Audience)
	}

	var secret struct{ Data map[string]string }
	mustUnmarshal(t, docs["Secret/berth-snapshot-metadata-tls"], &secret)
	if secret.Data["ca.crt"] != sms.Spec.CACert {
		t.Error("the object's caCert is not the Secret's ca.crt")
	}
	roots := x509.NewCertPool()
	roots.AddCert(parseCert(t, sms.Spec.CACert))
	cert := parseCert(t, secret.Data["tls.crt"])
	for _, name := range []string{"berth-snapshot-metadata.kube-system", "berth-snapshot-metadata.kube-system.svc", "backup.example.com", "127.0.0.1"} {
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: name, Roots: roots}); err != nil {
			t.Errorf("the sidecars' certificate for %s: %v", name, err)
		}
	}
	if len(cert.IPAddresses) != 1 || !cert.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) {
		t.Errorf("IP SANs %v, want [127.0.0.1]", cert.IPAddresses)
	}

	var ds struct {
		Spec struct {
			Template struct {
				Spec struct {
					NodeSelector map[string]string `json:"nodeSelector"`
					podSpec
				}
			}
		}
	}
	mustUnmarshal(t, docs["DaemonSet/berth-snapshot-metadata"], &ds)
	pod := ds.Spec.Template.Spec
	if pod.NodeSelector["berth.csi.io/reflink"] != "true" {
		t.Errorf("nodeSelector %v", pod.NodeSelector)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	args := pod.Containers[0].Args
	for _, want := range []string{"--csi-address=/csi/csi.sock", "--port=9814", "--http-endpoint=:9815", "--audience=berth.csi.io", "--tls-cert=/tls/tls.crt", "--tls-key=/tls/tls.key"} {
		if !slices.Contains(args, want) {
			t.Errorf("sidecar args %v lack %s", args, want)
		}
	}
	var socket string
	for _, v := range pod.Volumes {
		if v.Name == "socket-dir" && v.HostPath != nil {
			socket = v.HostPath.Path
		}
	}
	if socket != "/var/lib/kubelet/plugins/berth.csi.io" {
		t.Errorf("socket directory %q, want the node plugin's on the host", socket)
	}

	var svc struct {
		Spec struct {
			InternalTrafficPolicy string            `json:"internalTrafficPolicy"`
			Selector              map[string]string `json:"selector"`
		}
	}
	mustUnmarshal(t, docs["Service/berth-snapshot-metadata"], &svc)
	// Forwarding (the default): any node's sidecar answers for every snapshot.
	if svc.Spec.InternalTrafficPolicy != "" || svc.Spec.Selector["app.kubernetes.io/component"] != "snapshot-metadata" {
		t.Errorf("Service spec %+v", svc.Spec)
	}
	var node object
	mustUnmarshal(t, docs["DaemonSet/berth-node"], &node)
	if !slices.Contains(node.args("berth"), "--snapshot-metadata-address=[$(POD_IP)]:9816") {
		t.Errorf("node plugin args %v: no peers' SnapshotMetadata address", node.args("berth"))
	}

	var role object
	mustUnmarshal(t, docs["ClusterRole/berth-snapshot-metadata"], &role)
	for _, g := range []struct{ group, resource, verb string }{
		{"authentication.k8s.io", "tokenreviews", "create"},
		{"authorization.k8s.io", "subjectaccessreviews", "create"},
		{"snapshot.storage.k8s.io", "volumesnapshots", "get"},
		{"snapshot.storage.k8s.io", "volumesnapshotcontents", "get"},
		{"snapshot.storage.k8s.io", "volumesnapshotclasses", "get"},
	} {
		if !grants(role.Rules, g.group, g.resource, g.verb) {
			t.Errorf("the sidecar may not %s %s.%s", g.verb, g.resource, g.group)
		}
	}
	for _, verb := range []string{"create", "update", "delete"} {
		if grants(role.Rules, "snapshot.storage.k8s.io", "volumesnapshotcontents", verb) {
			t.Errorf("the sidecar may %s VolumeSnapshotContents", verb)
		}
	}
}

// TestSnapshotMetadataWithoutForwarding: forward off keeps each client on its own
// node's sidecar (the Service's internalTrafficPolicy: Local) and gives the node
// plugins no peers' address; forward needs the transfer channel's certificates.
func TestSnapshotMetadataWithoutForwarding(t *testing.T) {
	docs := renderDocs(t, `snapshotMetadata: {enabled: true, forward: false}`)
	var svc struct {
		Spec struct {
			InternalTrafficPolicy string `json:"internalTrafficPolicy"`
		}
	}
	mustUnmarshal(t, docs["Service/berth-snapshot-metadata"], &svc)
	if svc.Spec.InternalTrafficPolicy != "Local" {
		t.Errorf("internalTrafficPolicy %q, want Local", svc.Spec.InternalTrafficPolicy)
	}
	var node object
	mustUnmarshal(t, docs["DaemonSet/berth-node"], &node)
	for _, a := range node.args("berth") {
		if strings.HasPrefix(a, "--snapshot-metadata-address") {
			t.Errorf("node plugin arg %s without forwarding", a)
		}
	}
	if out, err := tryTemplate(t, `{snapshotMetadata: {enabled: true}, transfer: {enabled: false}}`); err == nil || !strings.Contains(out, "snapshotMetadata.forward needs transfer.enabled") {
		t.Errorf("forward without the transfer channel: err %v\n%s", err, out)
	}
	if _, err := tryTemplate(t, `{snapshotMetadata: {enabled: true, forward: false}, transfer: {enabled: false}}`); err != nil {
		t.Errorf("no forwarding, no transfer channel: %v", err)
	}
}

// TestSnapshotMetadataAddressAndSecret: an address given is the object's; an
// existing Secret is used without a CA only if its CA's PEM comes with it.
func TestSnapshotMetadataAddressAndSecret(t *testing.T) {
	docs := renderDocs(t, `snapshotMetadata: {enabled: true, address: "cbt.example.com:443", audience: backups}`)
	var sms struct {
		Spec struct{ Address, Audience string }
	}
	mustUnmarshal(t, docs["SnapshotMetadataService/berth.csi.io"], &sms)
	if sms.Spec.Address != "cbt.example.com:443" || sms.Spec.Audience != "backups" {
		t.Errorf("spec %+v", sms.Spec)
	}
	if out, err := tryTemplate(t, `snapshotMetadata: {enabled: true, existingSecret: my-tls}`); err == nil || !strings.Contains(out, "snapshotMetadata.existingSecret needs snapshotMetadata.caCert") {
		t.Errorf("existingSecret without caCert: err %v\n%s", err, out)
	}
	docs = renderDocs(t, `snapshotMetadata: {enabled: true, existingSecret: my-tls, caCert: "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"}`)
	if _, ok := docs["Secret/berth-snapshot-metadata-tls"]; ok {
		t.Error("a Secret rendered beside existingSecret")
	}
}

func mustUnmarshal(t *testing.T, doc []byte, v any) {
	t.Helper()
	if err := yaml.Unmarshal(doc, v); err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
}

func parseCert(t *testing.T, b64 string) *x509.Certificate {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		t.Fatalf("no PEM in %q", raw)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
