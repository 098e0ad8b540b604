package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/mounter"
	"sigs.k8s.io/yaml"
)

const (
	sharedPoolName = "shared"
	sharedClass    = "berth-shared"
	// sharedMount is where the host mounts the GlusterFS volume: an operator-mounted
	// shared pool, seen by the driver pods through its parent directory.
	sharedMount = "/var/lib/berth-shared/e2e"
)

// A shared pool on a real GlusterFS volume mounted on the host: the chart adds the
// controller Deployment, whose provisioner alone binds the shared class's claims
// (Immediate); two pods share a ReadWriteMany claim; node-local claims keep working
// beside the Deployment and are deleted from the host when their claims go.
func TestSharedPoolController(t *testing.T) {
	c := setup(t)
	helm := os.Getenv("BERTH_HELM")
	if helm == "" {
		t.Skip("needs BERTH_HELM, the helm binary make e2e uses, to add a shared pool to the release")
	}
	// The pods see the pool through its parent, HostToContainer, which needs the
	// parent on a shared mount (systemd makes / one; hack/cluster-up.sh prepares it).
	if !isSharedMount(t, filepath.Dir(sharedMount)) {
		t.Skipf("%s is not a shared mount point: hack/cluster-up.sh prepares it", filepath.Dir(sharedMount))
	}
	g := testutil.StartGluster(t)
	t.Cleanup(func() { _ = os.Remove(sharedMount) }) // empty once unmounted
	g.Mount(t, sharedMount)
	c.withSharedPool(helm)

	// The claim binds before any pod asks for it: the class binds Immediate, and only
	// the central provisioner takes Immediate claims.
	c.apply(strings.Replace(pvc("shared", sharedClass, "64Mi", "Filesystem"), "[ReadWriteOnce]", "[ReadWriteMany]", 1))
	c.waitFor("shared claim bound", 2*time.Minute, func() bool {
		out, _ := c.try("get", "pvc", "shared", "-o", "jsonpath={.status.phase}")
		return out == "Bound"
	})
	pv := c.jsonpath("pvc/shared", "{.spec.volumeName}")
	if aff := c.kubectlNS("", "get", "pv", pv, "-o", "jsonpath={.spec.nodeAffinity}"); aff != "" {
		t.Errorf("shared PV %s has node affinity %s, want none (it follows its pod)", pv, aff)
	}
	handle := c.kubectlNS("", "get", "pv", pv, "-o", "jsonpath={.spec.csi.volumeHandle}")
	logs := c.kubectlNS(driverNS, "logs", "deploy/berth-controller", "-c", "berth")
	if !strings.Contains(logs, handle) {
		t.Errorf("the controller Deployment's driver did not create %s; its log:\n%s", handle, logs)
	}

	// Two pods on the one ReadWriteMany claim at once: one writes, the other reads it.
	c.apply(podOn("writer", "shared", "echo from-writer > /data/f && sync && sleep 3600", "Never"))
	c.apply(podOn("reader", "shared", "until [ -s /data/f ]; do sleep 0.2; done; cat /data/f; sleep 3600", "Never"))
	c.waitReady("writer", 2*time.Minute)
	c.waitReady("reader", 2*time.Minute)
	c.waitFor("reader sees the writer's file", time.Minute, func() bool {
		out, _ := c.try("logs", "reader")
		return out == "from-writer\n"
	})
	dir := c.hostPathOf("shared", sharedMount)
	if b, err := os.ReadFile(filepath.Join(dir, "data", "f")); err != nil || string(b) != "from-writer\n" {
		t.Errorf("the GlusterFS volume holds %q (%v) at %s", b, err, dir)
	}

	// A node-local claim beside the Deployment: bound by the node, removed with its claim.
	c.apply(pvc("local", "berth", "64Mi", "Filesystem"))
	c.apply(podOn("local", "local", "echo local > /data/f && sync", "Never"))
	c.waitPhase("local", "Succeeded", 2*time.Minute)
	localDir := c.hostPathOf("local", defaultPool)
	localPV := c.jsonpath("pvc/local", "{.spec.volumeName}")

	c.kubectl("delete", "pod", "writer", "reader", "local", "--wait=true", "--grace-period=1")
	c.kubectl("delete", "pvc", "shared", "local", "--wait=true")
	for _, v := range []struct{ pv, dir string }{{pv, dir}, {localPV, localDir}} {
		c.waitFor("PV "+v.pv+" deleted and "+v.dir+" removed from the host", 2*time.Minute, func() bool {
			_, err := os.Stat(v.dir)
			_, perr := c.tryNS("", "get", "pv", v.pv)
			return os.IsNotExist(err) && perr != nil
		})
	}
}

// withSharedPool upgrades the Berth release with a shared pool at sharedMount and a
// class for it, and rolls the release back at cleanup (registered after the caller's
// mount, so it runs before the unmount): the Deployment goes, and the node pods
// restart without the pool before its filesystem does. A rollback, not an upgrade
// with the old values: after a failed upgrade, helm diffs an upgrade against the
// last successful release and would leave the failed one's objects in place.
func (c *cluster) withSharedPool(helm string) {
	t := c.t
	t.Helper()
	var status struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal([]byte(c.helm(helm, "status", "berth", "-n", driverNS, "-o", "json")), &status); err != nil || status.Version == 0 {
		t.Fatalf("helm status berth: revision %d, %v", status.Version, err)
	}
	saved := c.helm(helm, "get", "values", "berth", "-n", driverNS, "-o", "yaml")
	var values map[string]any
	if err := yaml.Unmarshal([]byte(saved), &values); err != nil {
		t.Fatalf("helm get values: %v\n%s", err, saved)
	}
	pools, _ := values["pools"].([]any)
	values["pools"] = append(pools, map[string]any{"name": sharedPoolName, "path": sharedMount, "kind": "shared"})
	classes, _ := values["storageClasses"].([]any)
	values["storageClasses"] = append(classes, map[string]any{
		"name": sharedClass, "pool": sharedPoolName, "reclaimPolicy": "Delete", "allowVolumeExpansion": true, "parameters": map[string]any{},
	})
	withShared, err := yaml.Marshal(values)
	if err != nil {
		t.Fatal(err)
	}
	sharedFile := filepath.Join(t.TempDir(), "shared.yaml")
	if err := os.WriteFile(sharedFile, withShared, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		rev := strconv.Itoa(status.Version)
		if _, err := c.tryHelm(helm, "rollback", "berth", rev, "-n", driverNS, "--wait", "--timeout", "3m"); err != nil {
			t.Errorf("rolling the release back to revision %s: %v", rev, err)
		}
		_, _ = c.tryNS(driverNS, "wait", "--for=delete", "deploy/berth-controller", "--timeout=2m")
		if _, err := c.tryNS(driverNS, "rollout", "status", "ds/"+nodeDS, "--timeout=2m"); err != nil {
			t.Errorf("node pods after the rollback: %v", err)
		}
	})
	chart := filepath.Join("..", "..", "charts", "berth")
	c.helm(helm, "upgrade", "berth", chart, "-n", driverNS, "--reset-values", "-f", sharedFile, "--wait", "--timeout", "3m")
	c.kubectlNS(driverNS, "rollout", "status", "ds/"+nodeDS, "--timeout=2m")
	c.kubectlNS(driverNS, "rollout", "status", "deploy/berth-controller", "--timeout=2m")
}

// isSharedMount reports whether dir is a mount point with shared propagation.
func isSharedMount(t *testing.T, dir string) bool {
	t.Helper()
	m, err := mounter.At(dir)
	if err != nil {
		t.Fatal(err)
	}
	return m != nil && slices.ContainsFunc(strings.Fields(m.Optional), func(f string) bool {
		return strings.HasPrefix(f, "shared:")
	})
}

func (c *cluster) tryHelm(helm string, args ...string) (string, error) {
	out, err := exec.Command(helm, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (c *cluster) helm(helm string, args ...string) string {
	c.t.Helper()
	out, err := c.tryHelm(helm, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}
