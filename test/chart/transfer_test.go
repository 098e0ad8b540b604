package chart

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/berth-csi/berth/pkg/driver"
	"github.com/berth-csi/berth/pkg/transfer"
)

// The transfer channel, on by default: the chart makes a CA the driver accepts
// (a node mints its certificate from it), mounts it into the driver container
// only, and serves the channel on the pod's IP at its own port. The controller,
// which holds no node's data, has none of it.
func TestTransferChannel(t *testing.T) {
	objs := render(t, sharedValues)
	sec, ok := objs["Secret/berth-transfer-ca"]
	if !ok {
		t.Fatal("no Secret berth-transfer-ca rendered")
	}
	dir := t.TempDir()
	for _, f := range []string{transfer.CACertFile, transfer.CAKeyFile} {
		b, err := base64.StdEncoding.DecodeString(sec.Data[f])
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := transfer.NewIssuer(dir, "node-a"); err != nil {
		t.Fatalf("the chart's CA does not serve the driver: %v", err)
	}

	ds := objs["DaemonSet/berth-node"]
	c := ds.container("berth")
	for _, want := range []string{"--transfer-address=[$(POD_IP)]:9813", "--transfer-ca-dir=" + driver.DefaultTransferCADir, "--transfer-rate-limit=0"} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("driver args %q lack %s", c.Args, want)
		}
	}
	if !slices.ContainsFunc(c.Ports, func(p port) bool { return p.Name == "transfer" && p.ContainerPort == 9813 }) {
		t.Errorf("driver ports %+v lack transfer 9813", c.Ports)
	}
	pod := ds.Spec.Template.Spec
	if !slices.ContainsFunc(pod.Volumes, func(v volume) bool { return v.Secret != nil && v.Secret.SecretName == "berth-transfer-ca" }) {
		t.Errorf("no volume of Secret berth-transfer-ca")
	}
	for _, c := range pod.Containers {
		if mounts := pod.mounts(c.Name, driver.DefaultTransferCADir); mounts != (c.Name == "berth") {
			t.Errorf("container %s mounts the transfer CA: %v", c.Name, mounts)
		}
	}
	if args := objs["Deployment/berth-controller"].args("berth"); slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--transfer") }) {
		t.Errorf("the controller serves the channel: %q", args)
	}

	// The driver takes the rendered flags (POD_IP as the kubelet expands it).
	args := slices.Clone(c.Args)
	for i, a := range args {
		args[i] = strings.NewReplacer("$(POD_IP)", "10.0.0.7", "$(NODE_NAME)", "node-a").Replace(a)
		if strings.HasPrefix(a, "--config=") || strings.HasPrefix(a, "--cgroup-root") || strings.HasPrefix(a, "--registration") {
			args[i] = "--registration=off"
		}
	}
	o, err := driver.ParseFlags("csi-driver", args)
	if err != nil {
		t.Fatalf("the driver refuses the chart's flags: %v", err)
	}
	if o.TransferAddress != "[10.0.0.7]:9813" || o.TransferRateLimit != 0 {
		t.Errorf("transfer address %q, rate %d", o.TransferAddress, o.TransferRateLimit)
	}
}

// A CA of the user's: no Secret made, theirs mounted; the channel off: nothing.
func TestTransferChannelValues(t *testing.T) {
	objs := render(t, "transfer:\n  existingSecret: my-ca\n  rateLimit: 100Mi\n")
	if _, ok := objs["Secret/berth-transfer-ca"]; ok {
		t.Error("a CA made beside existingSecret")
	}
	pod := objs["DaemonSet/berth-node"].Spec.Template.Spec
	if !slices.ContainsFunc(pod.Volumes, func(v volume) bool { return v.Secret != nil && v.Secret.SecretName == "my-ca" }) {
		t.Errorf("existingSecret my-ca not mounted")
	}
	if args := objs["DaemonSet/berth-node"].args("berth"); !slices.Contains(args, "--transfer-rate-limit=100Mi") {
		t.Errorf("rate limit: %q", args)
	}
	off := render(t, "transfer:\n  enabled: false\n")
	if _, ok := off["Secret/berth-transfer-ca"]; ok {
		t.Error("a CA made with the channel off")
	}
	ds := off["DaemonSet/berth-node"]
	if slices.ContainsFunc(ds.args("berth"), func(a string) bool { return strings.HasPrefix(a, "--transfer") }) ||
		slices.ContainsFunc(ds.Spec.Template.Spec.Volumes, func(v volume) bool { return v.Name == "transfer-ca" }) {
		t.Errorf("channel off: args %q", ds.args("berth"))
	}
}

// Off the host network the channel would listen on the pod's IP while the other
// nodes dial the node's InternalIP: the chart refuses it, naming both values, and
// renders with the channel turned off.
func TestTransferNeedsHostNetwork(t *testing.T) {
	for _, tc := range []struct {
		values string
		fails  bool
	}{
		{"hostNetwork: false\n", true},
		{"hostNetwork: false\ntransfer: {enabled: false}\n", false},
	} {
		out, err := tryTemplate(t, tc.values)
		switch {
		case tc.fails && (err == nil || !strings.Contains(out, "transfer.enabled needs hostNetwork: true")):
			t.Errorf("%q: %v\n%s", tc.values, err, out)
		case !tc.fails && err != nil:
			t.Errorf("%q: %v\n%s", tc.values, err, out)
		}
	}
}
