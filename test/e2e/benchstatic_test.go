package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The bench's "static" subject: the same claims, bound to PersistentVolumes the test
// made beforehand (local volumes of one host directory, spread over the nodes), with
// a StorageClass that has no provisioner. That is what a perfect provisioner would
// cost (no CreateVolume, no PV to write, no storage-provisioner annotation to wait
// for): what is left is Kubernetes' own work for a WaitForFirstConsumer claim (the
// scheduler's choice of a PV and its write of the PV's claim, the PV controller's
// binding, the kubelet's reads of claim and PV). Berth over static is Berth's own
// share of the gap to emptyDir; static over emptyDir the cluster's.
const (
	staticClass = "berth-bench-static"
	staticLabel = "berth-bench-static" // on the PVs: the namespace they were made for
	staticDir   = "/var/lib/berth-bench-static"
)

// ensureStatic makes the StorageClass and the host directory of the static PVs, and
// removes them, and any static PV left, at cleanup. The further nodes see this
// machine's /var/lib (but for their own directories: hack/cluster-lib.sh,
// NODE_OWN_DIRS). Call it before setup, so that the namespace goes first.
func ensureStatic(t *testing.T) {
	t.Helper()
	if err := os.MkdirAll(staticDir, 0o755); err != nil {
		t.Fatal(err)
	}
	class := fmt.Sprintf(`apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: %s}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
`, staticClass)
	if out, err := kubectlStdin(class, "apply", "-f", "-"); err != nil {
		t.Fatalf("static StorageClass: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		for _, args := range [][]string{
			{"delete", "pv", "-l", staticLabel, "--wait=true", "--timeout=120s"},
			{"delete", "storageclass", staticClass, "--ignore-not-found"},
		} {
			if out, err := kubectlBare(args...); err != nil {
				t.Errorf("cleanup: %v\n%s", err, out)
			}
		}
		if err := os.RemoveAll(staticDir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
}

// staticPVs makes count PVs of the static class for the namespace's claims, the
// nodes in turn, each of size and Retain (the test deletes them: deleteAll). Not
// measured: they exist before the claims, as a static provisioner's would.
func (c *cluster) staticPVs(count int, size string) {
	c.t.Helper()
	out := c.kubectl("get", "nodes", "-o", `jsonpath={range .items[*]}{.metadata.labels.kubernetes\.io/hostname}{"\n"}{end}`)
	nodes := strings.Fields(out)
	if len(nodes) == 0 {
		c.t.Fatal("static PVs: no node")
	}
	objs := make([]string, count)
	for i := range count {
		objs[i] = fmt.Sprintf(`apiVersion: v1
kind: PersistentVolume
metadata:
  generateName: static-
  labels: {%s: %s}
spec:
  capacity: {storage: %s}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: %s
  volumeMode: Filesystem
  local: {path: %s}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {key: kubernetes.io/hostname, operator: In, values: [%s]}
`, staticLabel, c.ns, size, staticClass, staticDir, nodes[i%len(nodes)])
	}
	start := time.Now()
	c.createAtOnce(objs, bulkCreators)
	c.t.Logf("static: %d PVs made over %d nodes in %v (not measured)", count, len(nodes), time.Since(start).Round(10*time.Millisecond))
}

// staticLeft counts the namespace's static PVs; -1 when kubectl fails.
func (c *cluster) staticLeft() int {
	out, err := kubectlBare("get", "pv", "-l", staticLabel+"="+c.ns, "-o", "name")
	if err != nil {
		return -1
	}
	return len(strings.Fields(out))
}

// deleteStaticPVs deletes the namespace's static PVs, as an administrator would once
// their claims are gone (Released: reclaim Retain); false when kubectl fails.
func (c *cluster) deleteStaticPVs() bool {
	_, err := kubectlBare("delete", "pv", "-l", staticLabel+"="+c.ns, "--wait=false")
	return err == nil
}

// kubectlStdin runs kubectl with manifest on its standard input, no namespace flag.
func kubectlStdin(manifest string, args ...string) (string, error) {
	cmd := exec.Command(kubectlPath(), args...)
	cmd.Stdin = strings.NewReader(manifest)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
