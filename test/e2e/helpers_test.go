package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

const (
	busybox     = "registry.k8s.io/e2e-test-images/busybox:1.37.0-2"
	driverNS    = "kube-system"
	nodeDS      = "berth-node"
	defaultPool = "/var/lib/berth/default"
	// thisNode is the node whose kubelet runs on this machine (hack/cluster-up.sh):
	// its pools and the volumes' mounts are this machine's own.
	thisNode = "localhost"
	// onThisNode selects thisNode's pods (the node plugin's, say).
	onThisNode = "--field-selector=spec.nodeName=" + thisNode
)

// nsUnsafe matches what a namespace name may not hold.
var nsUnsafe = regexp.MustCompile(`[^a-z0-9-]`)

// cluster gives a test its own namespace, removed (with its claims) at cleanup.
type cluster struct {
	t  *testing.T
	ns string
}

// group says how a test shares the cluster. make e2e runs the alone group first, one
// test at a time, then the parallel group's tests all at once beside the Kubernetes
// external storage suite (hack/e2e.sh); BERTH_E2E_GROUP=alone or parallel runs only
// that group, unset runs both (the parallel ones after the others, as go test does).
type group string

const (
	// alone: the test changes what other tests would see: the release's values, a
	// node's plugin, kubelet or free space, or objects outside its namespace that other
	// tests' volumes could be mistaken for (orphans, capacity).
	alone group = "alone"
	// parallel: the test touches only its own namespace, its own claims and their
	// volumes, and tolerates a busy cluster.
	parallel group = "parallel"
)

// inGroup skips t unless BERTH_E2E_GROUP selects g (or nothing), and lets a parallel
// test run beside the others.
func inGroup(t *testing.T, g group) {
	t.Helper()
	if sel := os.Getenv("BERTH_E2E_GROUP"); sel != "" && sel != string(g) {
		t.Skipf("in the %s group; BERTH_E2E_GROUP=%s", g, sel)
	}
	if g == parallel {
		t.Parallel()
	}
}

// setup skips t without a cluster or outside the selected group, then gives it its
// own namespace.
func setup(t *testing.T, g group) *cluster {
	t.Helper()
	if os.Getenv("BERTH_E2E") != "1" {
		t.Skip("end-to-end test: needs a cluster with Berth installed; run make e2e (sets BERTH_E2E=1)")
	}
	inGroup(t, g)
	// A DNS label: subtests' names may hold "/" and "_".
	name := nsUnsafe.ReplaceAllString(strings.ToLower(t.Name()), "-")
	ns := fmt.Sprintf("e2e-%s-%d", name, time.Now().UnixNano()%100000)
	if len(ns) > 60 {
		ns = ns[len(ns)-60:]
		ns = "e" + strings.TrimLeft(ns, "-")
	}
	c := &cluster{t: t, ns: ns}
	c.kubectl("create", "namespace", ns)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := c.try("get", "pods,pvc,events", "-o", "wide")
			t.Logf("namespace %s at failure:\n%s", ns, out)
		}
		_, _ = c.try("delete", "namespace", ns, "--wait=true", "--timeout=120s")
	})
	return c
}

func kubectlPath() string {
	if p := os.Getenv("BERTH_KUBECTL"); p != "" {
		return p
	}
	return "kubectl"
}

// try runs kubectl in the test's namespace and returns its output and error.
func (c *cluster) try(args ...string) (string, error) {
	return kubectlBare(append([]string{"-n", c.ns}, args...)...)
}

// kubectlBare runs kubectl with no namespace flag (for manifests that name their own)
// and returns its output and error.
func kubectlBare(args ...string) (string, error) {
	cmd := exec.Command(kubectlPath(), args...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out.String(), nil
}

func (c *cluster) kubectl(args ...string) string {
	c.t.Helper()
	out, err := c.try(args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// apply creates the objects in manifest in the test's namespace.
func (c *cluster) apply(manifest string) {
	c.t.Helper()
	c.fromManifest("apply", manifest)
}

// fromManifest runs kubectl verb (apply, create) on manifest in the test's namespace.
func (c *cluster) fromManifest(verb, manifest string) {
	c.t.Helper()
	cmd := exec.Command(kubectlPath(), "-n", c.ns, verb, "-f", "-")
	cmd.Stdin = strings.NewReader(manifest)
	if out, err := cmd.CombinedOutput(); err != nil {
		c.t.Fatalf("%s: %v\n%s\n%s", verb, err, out, manifest)
	}
}

// jsonpath reads one field of an object.
func (c *cluster) jsonpath(obj, path string) string {
	c.t.Helper()
	return c.kubectl("get", obj, "-o", "jsonpath="+path)
}

// waitFor polls cond every 250 ms until it is true or the timeout passes.
func (c *cluster) waitFor(what string, timeout time.Duration, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func (c *cluster) waitPhase(pod, phase string, timeout time.Duration) {
	c.t.Helper()
	c.waitFor("pod "+pod+" "+phase, timeout, func() bool {
		out, _ := c.try("get", "pod", pod, "-o", "jsonpath={.status.phase}")
		if out == "Failed" && phase != "Failed" {
			logs, _ := c.try("logs", pod)
			c.t.Fatalf("pod %s failed: %s", pod, logs)
		}
		return out == phase
	})
}

func (c *cluster) waitReady(pod string, timeout time.Duration) {
	c.t.Helper()
	c.kubectl("wait", "--for=condition=Ready", "pod/"+pod, "--timeout="+timeout.String())
}

// pvc is a claim manifest; mode is "Filesystem" or "Block".
func pvc(name, class, size, mode string) string {
	return claimWith(name, class, size, mode, "")
}

// claimWith is a claim manifest with extra lines under spec (indented by two).
func claimWith(name, class, size, mode, extra string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: %s}
spec:
  storageClassName: %q
  accessModes: [ReadWriteOnce]
  volumeMode: %s
  resources: {requests: {storage: %s}}
%s`, name, class, mode, size, extra)
}

// podOn is a busybox pod running script with claim mounted at /data, on thisNode:
// the tests that look at a volume's host directory or mounts run there.
func podOn(name, claim, script, restart string) string {
	return podOnNode(name, thisNode, claim, script, restart)
}

// podOnNode is podOn on the given node ("" lets the scheduler choose).
func podOnNode(name, node, claim, script, restart string) string {
	sel := ""
	if node != "" {
		sel = fmt.Sprintf("\n  nodeSelector: {kubernetes.io/hostname: %s}", node)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s}
spec:
  restartPolicy: %s
  terminationGracePeriodSeconds: 1%s
  containers:
  - name: main
    image: %s
    imagePullPolicy: IfNotPresent
    command: ["/bin/sh", "-c", %s]
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: %s}
`, name, restart, sel, busybox, quote(script), claim)
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// hostPathOf maps a claim's volume to its data directory on this node (pool path,
// volumes/<hash>/data), from the volume ID b1-<pool>-<hash>.
func (c *cluster) hostPathOf(claim, poolPath string) string {
	c.t.Helper()
	handle := c.volumeHandle(claim)
	i := strings.LastIndex(handle, "-")
	if !strings.HasPrefix(handle, "b1-") || i < 0 {
		c.t.Fatalf("volume handle %q is not a Berth ID", handle)
	}
	return filepath.Join(poolPath, "volumes", handle[i+1:])
}

// volumeHandle is the volume ID of claim's PersistentVolume.
func (c *cluster) volumeHandle(claim string) string {
	c.t.Helper()
	pv := c.jsonpath("pvc/"+claim, "{.spec.volumeName}")
	return c.kubectl("get", "pv", pv, "-o", "jsonpath={.spec.csi.volumeHandle}")
}
