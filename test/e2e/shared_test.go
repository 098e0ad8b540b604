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
	// clusterShared is where every node of hack/cluster-up.sh mounts the cluster's
	// GlusterFS volume (bricks on nodes 2 and 3: hack/cluster-gluster.sh).
	clusterShared = "/var/lib/berth-shared/cluster"
	// testShared is where a one-node cluster's test mounts a GlusterFS volume of its
	// own (a glusterd on 127.0.0.2): an operator-mounted shared pool, seen by the
	// driver pods through its parent directory.
	testShared = "/var/lib/berth-shared/e2e"
)

// A shared pool on a real GlusterFS volume mounted on the host, and so on every node
// (each node's /var/lib/berth-shared is a slave of this machine's): the release is
// upgraded once with the pool, for both subtests (an upgrade and its rollback cost
// half a minute each), and rolled back after them.
func TestSharedPool(t *testing.T) {
	c := setup(t, alone)
	helm := os.Getenv("BERTH_HELM")
	if helm == "" {
		t.Skip("needs BERTH_HELM, the helm binary make e2e uses, to add a shared pool to the release")
	}
	sharedMount := clusterShared
	if m, err := mounter.At(clusterShared); err != nil || m == nil || m.FSType != "fuse.glusterfs" {
		// The pods see the pool through its parent, HostToContainer, which needs the
		// parent on a shared mount (systemd makes / one; hack/cluster-up.sh prepares it).
		if !isSharedMount(t, filepath.Dir(testShared)) {
			t.Skipf("%s is not a shared mount point: hack/cluster-up.sh prepares it", filepath.Dir(testShared))
		}
		g := testutil.StartGluster(t)
		t.Cleanup(func() { _ = os.Remove(testShared) }) // empty once unmounted
		g.Mount(t, testShared)
		sharedMount = testShared
	}
	t.Logf("shared pool at %s", sharedMount)
	c.withSharedPool(helm, sharedMount)
	t.Run("controller", func(t *testing.T) { sharedPoolController(setup(t, alone), sharedMount) })
	t.Run("backups", func(t *testing.T) {
		if sharedMount != clusterShared {
			t.Skipf("needs the cluster's GlusterFS volume at %s (hack/cluster-up.sh with NODES>=3)", clusterShared)
		}
		backupAndRecoverAfterNodeLost(setup(t, alone))
	})
}

// sharedPoolController: the chart adds the controller Deployment, whose provisioner
// alone binds the shared class's claims (Immediate); two pods on two nodes share a
// ReadWriteMany claim and see each other's writes (the delay is logged); node-local
// claims keep working beside the Deployment and are deleted from the host when their
// claims go.
func sharedPoolController(c *cluster, sharedMount string) {
	t := c.t
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

	// Two pods on the one ReadWriteMany claim at once, on two nodes where the cluster
	// has them: one writes, the other reads it, and the other way round.
	nodes := c.nodes()
	readerNode := nodes[len(nodes)-1]
	c.apply(podOnNode("writer", thisNode, "shared", sharedWriterScript, "Never"))
	c.apply(podOnNode("reader", readerNode, "shared", sharedReaderScript, "Never"))
	c.waitReady("writer", 2*time.Minute)
	c.waitReady("reader", 2*time.Minute)
	c.waitFor("reader sees the writer's file", time.Minute, func() bool {
		out, _ := c.try("logs", "reader")
		return strings.HasPrefix(out, "from-writer\n")
	})
	c.waitFor("reader sees the writer's last write", time.Minute, func() bool {
		out, _ := c.try("logs", "reader")
		return strings.Contains(out, fmt.Sprintf("seen %d ", visibilityWrites))
	})
	delays := visibilityDelays(t, c.kubectl("logs", "reader"))
	t.Logf("writes on %s seen on %s through GlusterFS: %d of %d seen (polling every 10 ms), delay median %v, max %v",
		thisNode, readerNode, len(delays), visibilityWrites, median(delays), maxOf(delays))
	c.kubectl("exec", "reader", "--", "sh", "-c", "echo from-reader > /data/back")
	c.waitFor("writer sees the reader's file", time.Minute, func() bool {
		out, _ := c.try("exec", "writer", "--", "cat", "/data/back")
		return out == "from-reader\n"
	})
	if readerNode != thisNode {
		c.singleNodeAcrossNodes(readerNode)
	}
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

// singleNodeAcrossNodes: a ReadWriteOnce claim of the shared pool is held by the node
// that publishes it first; a pod on another node waits, its mount refused naming the
// holder, until the first pod is gone.
func (c *cluster) singleNodeAcrossNodes(other string) {
	c.t.Helper()
	c.apply(pvc("rwo", sharedClass, "16Mi", "Filesystem"))
	c.apply(podOnNode("rwo-a", thisNode, "rwo", "sleep 3600", "Never"))
	c.waitReady("rwo-a", 2*time.Minute)
	c.apply(podOnNode("rwo-b", other, "rwo", "sleep 3600", "Never"))
	var refused string
	c.waitFor("the second node's mount refused, naming the holder", 2*time.Minute, func() bool {
		refused, _ = c.try("get", "events", "--field-selector", "involvedObject.name=rwo-b,reason=FailedMount", "-o", "jsonpath={.items[*].message}")
		return strings.Contains(refused, "FailedPrecondition") && strings.Contains(refused, thisNode)
	})
	c.t.Logf("pod on %s: %s", other, refused)
	if phase := c.jsonpath("pod/rwo-b", "{.status.phase}"); phase != "Pending" {
		c.t.Errorf("pod on %s of a ReadWriteOnce claim held by %s: phase %s, want Pending", other, thisNode, phase)
	}
	start := time.Now()
	c.kubectl("delete", "pod", "rwo-a", "--wait=true", "--grace-period=1")
	c.waitReady("rwo-b", 4*time.Minute)
	c.t.Logf("pod on %s running %v after the holder's pod was deleted", other, time.Since(start).Round(time.Second))
	c.kubectl("delete", "pod", "rwo-b", "--wait=true", "--grace-period=1")
}

// visibilityWrites is how many timestamped writes the writer pod makes, 0.5 s apart.
const visibilityWrites = 20

// The writer writes "from-writer", then visibilityWrites lines "N <uptime>", each
// replacing the last by a rename; the reader prints each new one it sees with the
// uptime it saw it at (busybox's date has no sub-second format; /proc/uptime counts in
// 10 ms steps, and the nodes share this machine's kernel and so its uptime).
var (
	sharedWriterScript = fmt.Sprintf(`echo from-writer > /data/f && sync
i=0; while [ $i -lt %d ]; do i=$((i+1)); echo "$i $(cut -d' ' -f1 /proc/uptime)" > /data/w.tmp && mv /data/w.tmp /data/w; sleep 0.5; done
sleep 3600`, visibilityWrites)
	sharedReaderScript = `until [ -s /data/f ]; do usleep 10000; done; cat /data/f
last=""; while true; do v=$(cat /data/w 2>/dev/null); if [ -n "$v" ] && [ "$v" != "$last" ]; then echo "seen $v $(cut -d' ' -f1 /proc/uptime)"; last=$v; fi; usleep 10000; done`
)

// visibilityDelays parses the reader's "seen N written-at seen-at" lines.
func visibilityDelays(t *testing.T, log string) []time.Duration {
	t.Helper()
	var d []time.Duration
	for _, l := range strings.Split(log, "\n") {
		f := strings.Fields(l)
		if len(f) != 4 || f[0] != "seen" {
			continue
		}
		w, err1 := strconv.ParseFloat(f[2], 64)
		r, err2 := strconv.ParseFloat(f[3], 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("reader line %q: want two uptimes in seconds", l)
		}
		d = append(d, time.Duration((r-w)*float64(time.Second)).Round(10*time.Millisecond))
	}
	if len(d) == 0 {
		t.Fatalf("the reader saw none of the writes:\n%s", log)
	}
	return d
}

// withSharedPool upgrades the Berth release with a shared pool at path and a
// class for it (withValues: rolled back at cleanup, which runs before the caller's
// unmount, so the node pods restart without the pool before its filesystem goes).
func (c *cluster) withSharedPool(helm, path string) {
	c.withValues(helm, func(values map[string]any) {
		pools, _ := values["pools"].([]any)
		values["pools"] = append(pools, map[string]any{"name": sharedPoolName, "path": path, "kind": "shared"})
		classes, _ := values["storageClasses"].([]any)
		values["storageClasses"] = append(classes, map[string]any{
			"name": sharedClass, "pool": sharedPoolName, "reclaimPolicy": "Delete", "allowVolumeExpansion": true, "parameters": map[string]any{},
		})
	})
}

// withValues upgrades the Berth release with its values changed by edit, and rolls
// the release back at cleanup. A rollback, not an upgrade with the old values: after
// a failed upgrade, helm diffs an upgrade against the last successful release and
// would leave the failed one's objects in place.
func (c *cluster) withValues(helm string, edit func(values map[string]any)) {
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
	edit(values)
	edited, err := yaml.Marshal(values)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(file, edited, 0o600); err != nil {
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
	c.helm(helm, "upgrade", "berth", chart, "-n", driverNS, "--reset-values", "-f", file, "--wait", "--timeout", "3m")
	c.kubectlNS(driverNS, "rollout", "status", "ds/"+nodeDS, "--timeout=2m")
	if _, ok := values["pools"]; ok && strings.Contains(string(edited), "kind: shared") {
		c.kubectlNS(driverNS, "rollout", "status", "deploy/berth-controller", "--timeout=2m")
	}
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
