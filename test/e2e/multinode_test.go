package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-csi/berth/pkg/storage"
)

// A WaitForFirstConsumer claim is provisioned on the node its pod was scheduled to:
// one claim and pod pinned to each node, each PV's node affinity names that node, and
// the volume's data is on that node's disk and on no other.
func TestPlacementPerNode(t *testing.T) {
	c := setup(t, parallel)
	nodes := c.needNodes(2)
	for i, n := range nodes {
		name := fmt.Sprintf("c%d", i)
		c.apply(pvc(name, "berth", "64Mi", "Filesystem") + "---\n" +
			podOnNode(name, n, name, "echo "+n+" > /data/f && sync && sleep 3600", "Never"))
	}
	for i, n := range nodes {
		name := fmt.Sprintf("c%d", i)
		c.waitReady(name, 3*time.Minute)
		if got := c.jsonpath("pvc/"+name, `{.metadata.annotations.volume\.kubernetes\.io/selected-node}`); got != n {
			t.Errorf("claim %s: selected node %q, want %q", name, got, n)
		}
		if got := c.nodeOf(name); got != n {
			t.Errorf("claim %s: PV node affinity names %q, want %q", name, got, n)
		}
		f := filepath.Join(c.hostPathOf(name, defaultPool), "data", "f")
		for _, m := range nodes {
			out, err := c.nodeRun(m, "cat", f)
			switch {
			case m == n && (err != nil || out != n+"\n"):
				t.Errorf("claim %s: %s on its node %s holds %q (%v)", name, f, n, out, err)
			case m != n && err == nil:
				t.Errorf("claim %s of node %s: %s exists on node %s too", name, n, f, m)
			}
		}
	}
}

// capacities lists the CSIStorageCapacity objects of class by node.
func (c *cluster) capacities(class string) map[string]int64 {
	c.t.Helper()
	var list struct {
		Items []struct {
			StorageClassName string `json:"storageClassName"`
			Capacity         string `json:"capacity"`
			NodeTopology     struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"nodeTopology"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(c.kubectlNS("", "get", "csistoragecapacities", "-A", "-o", "json")), &list); err != nil {
		c.t.Fatal(err)
	}
	out := map[string]int64{}
	for _, it := range list.Items {
		if it.StorageClassName != class {
			continue
		}
		q, err := storage.ParseQuantity(it.Capacity)
		if err != nil {
			c.t.Fatalf("capacity %q: %v", it.Capacity, err)
		}
		out[it.NodeTopology.MatchLabels["topology.berth.csi.io/node"]] = q
	}
	return out
}

// freeBytes is what statfs says is free for unprivileged use in dir on node.
func (c *cluster) freeBytes(node, dir string) int64 {
	c.t.Helper()
	out, err := c.nodeRun(node, "stat", "-f", "-c", "%a %S", dir)
	if err != nil {
		c.t.Fatal(err)
	}
	f := strings.Fields(out)
	a, _ := strconv.ParseInt(f[0], 10, 64)
	s, _ := strconv.ParseInt(f[1], 10, 64)
	return a * s
}

// CSIStorageCapacity objects per node match each node's free space; a claim larger
// than any node's free space stays Pending with the scheduler's reason; one that fits
// on one node only lands there.
func TestCapacityPerNode(t *testing.T) {
	c := setup(t, alone)
	nodes := c.needNodes(2)
	// The provisioners publish every 15 s (hack/e2e-values.yaml); the disks change
	// as other volumes come and go: allow 64 MiB.
	const slack = 64 << 20
	var caps map[string]int64
	free := map[string]int64{}
	c.waitFor("capacity objects matching every node's free space", 2*time.Minute, func() bool {
		caps = c.capacities("berth")
		for _, n := range nodes {
			free[n] = c.freeBytes(n, defaultPool)
			if d := caps[n] - free[n]; d > slack || d < -slack {
				return false
			}
		}
		return true
	})
	for _, n := range nodes {
		t.Logf("node %s: capacity %d MiB, free %d MiB", n, caps[n]>>20, free[n]>>20)
	}
	sizes := make([]int64, 0, len(nodes))
	for _, n := range nodes {
		sizes = append(sizes, caps[n])
	}
	slices.Sort(sizes)
	largest, second := sizes[len(sizes)-1], sizes[len(sizes)-2]

	tooBig := (largest + 1<<30) >> 20
	c.apply(pvc("toobig", "berth", fmt.Sprintf("%dMi", tooBig), "Filesystem") + "---\n" +
		podOnNode("toobig", "", "toobig", "sleep 3600", "Never"))
	c.waitFor("the scheduler's reason for the claim no node can hold", time.Minute, func() bool {
		out, _ := c.try("get", "events", "--field-selector", "involvedObject.name=toobig,reason=FailedScheduling", "-o", "jsonpath={.items[*].message}")
		return strings.Contains(out, "did not have enough free storage")
	})
	if phase := c.jsonpath("pod/toobig", "{.status.phase}"); phase != "Pending" {
		t.Errorf("pod of a %d MiB claim: phase %s, want Pending", tooBig, phase)
	}
	if got := c.jsonpath("pvc/toobig", "{.status.phase}"); got != "Pending" {
		t.Errorf("a %d MiB claim: phase %s, want Pending", tooBig, got)
	}
	c.kubectl("delete", "pod", "toobig", "--wait=true")

	if largest-second < 1<<30 {
		t.Logf("no node has 1 GiB more than all others (%v): the claim for one node only is not tried", caps)
		return
	}
	one := (second + 512<<20) >> 20
	var want string
	for n, v := range caps {
		if v == largest {
			want = n
		}
	}
	c.apply(pvc("onlyone", "berth", fmt.Sprintf("%dMi", one), "Filesystem") + "---\n" +
		podOnNode("onlyone", "", "onlyone", "sleep 3600", "Never"))
	c.waitReady("onlyone", 3*time.Minute)
	if got := c.jsonpath("pod/onlyone", "{.spec.nodeName}"); got != want {
		t.Errorf("a %d MiB claim only node %s can hold: its pod runs on %s", one, want, got)
	}
	if got := c.nodeOf("onlyone"); got != want {
		t.Errorf("a %d MiB claim only node %s can hold: provisioned on %s", one, want, got)
	}
}

// writerOn is a pod on node appending a line every 0.2 s to its claim, forever.
func writerOn(name, node string) string {
	return pvc(name, "berth", "64Mi", "Filesystem") + "---\n" +
		podOnNode(name, node, name, "while true; do echo x >> /data/log; sleep 0.2; done", "Always")
}

// progress is, per pod, its mount of /data, its restarts and the lines of its log.
type progress struct {
	mount    string
	restarts string
	lines    int
}

func (c *cluster) progressOf(pod string) progress {
	c.t.Helper()
	return progress{
		mount:    c.podMount(pod),
		restarts: c.jsonpath("pod/"+pod, "{.status.containerStatuses[0].restartCount}"),
		lines:    lines(c.kubectl("exec", pod, "--", "cat", "/data/log")),
	}
}

// untouched fails the test unless each pod kept its mount and container and kept
// writing since before.
func (c *cluster) untouched(what string, before map[string]progress) {
	c.t.Helper()
	for pod, b := range before {
		a := c.progressOf(pod)
		if a.mount != b.mount || a.restarts != b.restarts || a.lines <= b.lines {
			c.t.Errorf("%s: pod %s was touched: mount %q -> %q, restarts %s -> %s, lines %d -> %d",
				what, pod, b.mount, a.mount, b.restarts, a.restarts, b.lines, a.lines)
		}
	}
}

// A node's plugin restarted, then a node's kubelet stopped: the other nodes' volumes
// and pods are untouched, and the stopped node's pod kept its volume meanwhile.
func TestNodeFailuresStayOnTheirNode(t *testing.T) {
	c := setup(t, alone)
	nodes := c.needNodes(3)
	for i, n := range nodes {
		c.apply(writerOn(fmt.Sprintf("w%d", i), n))
	}
	for i := range nodes {
		c.waitReady(fmt.Sprintf("w%d", i), 3*time.Minute)
	}
	others := func(skip int) map[string]progress {
		m := map[string]progress{}
		for i := range nodes {
			if i != skip {
				m[fmt.Sprintf("w%d", i)] = c.progressOf(fmt.Sprintf("w%d", i))
			}
		}
		return m
	}

	// The plugin of node 1 restarted.
	before := others(1)
	sel := "--field-selector=spec.nodeName=" + nodes[1]
	old := strings.TrimSpace(c.kubectlNS(driverNS, "get", "pods", "-l", "app.kubernetes.io/component=node", sel, "-o", "jsonpath={.items[0].metadata.name}"))
	c.kubectlNS(driverNS, "delete", "pod", old, "--wait=true")
	c.waitFor("node "+nodes[1]+"'s new plugin ready", 3*time.Minute, func() bool {
		out, _ := c.tryNS(driverNS, "get", "pods", "-l", "app.kubernetes.io/component=node", sel, "-o",
			`jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		f := strings.Fields(out)
		return len(f) == 2 && f[0] != old && f[1] == "True"
	})
	c.untouched("plugin of "+nodes[1]+" restarted", before)

	// The kubelet of node 2 stopped (SIGSTOP) until the node is NotReady.
	before = others(2)
	stopped := c.progressOf("w2")
	pid := c.kubeletPID(nodes[2])
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	c.waitFor("node "+nodes[2]+" not ready", 2*time.Minute, func() bool {
		s, _ := c.tryNS("", "get", "node", nodes[2], "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		return s == "Unknown" || s == "False"
	})
	// Meanwhile a new volume on another node is provisioned and published.
	c.apply(pvc("during", "berth", "64Mi", "Filesystem") + "---\n" +
		podOnNode("during", nodes[0], "during", "echo ok > /data/f && cat /data/f", "Never"))
	c.waitPhase("during", "Succeeded", 2*time.Minute)
	c.untouched("kubelet of "+nodes[2]+" stopped", before)
	// The stopped node's pod still writes to its volume (containers need no kubelet).
	f := filepath.Join(c.hostPathOf("w2", defaultPool), "data", "log")
	out, err := c.nodeRun(nodes[2], "cat", f)
	if err != nil || lines(out) <= stopped.lines {
		t.Errorf("pod w2 on the node whose kubelet stopped: %s has %d lines, had %d (%v)", f, lines(out), stopped.lines, err)
	}
	resume()
	c.kubectlNS("", "wait", "--for=condition=Ready", "node/"+nodes[2], "--timeout=2m")
	c.untouched("kubelet of "+nodes[2]+" resumed", map[string]progress{"w2": stopped})
}

// --max-volumes-per-node (chart value maxVolumesPerNode) is honoured by the scheduler
// on every node: a third pod with a volume pinned to a node that may hold two stays
// Pending with the scheduler's reason.
func TestMaxVolumesPerNode(t *testing.T) {
	c := setup(t, alone)
	helm := os.Getenv("BERTH_HELM")
	if helm == "" {
		t.Skip("needs BERTH_HELM, the helm binary make e2e uses, to change maxVolumesPerNode")
	}
	nodes := c.needNodes(2)
	c.withValues(helm, func(v map[string]any) { v["maxVolumesPerNode"] = 2 })
	for _, n := range nodes {
		c.waitFor("CSINode "+n+" allows 2 volumes", 2*time.Minute, func() bool {
			out, _ := c.tryNS("", "get", "csinode", n, "-o", `jsonpath={.spec.drivers[?(@.name=="berth.csi.io")].allocatable.count}`)
			return out == "2"
		})
	}
	n := nodes[1]
	for i := range 3 {
		name := fmt.Sprintf("m%d", i)
		c.apply(pvc(name, "berth", "16Mi", "Filesystem") + "---\n" + podOnNode(name, n, name, "sleep 3600", "Never"))
		if i < 2 {
			c.waitReady(name, 2*time.Minute)
		}
	}
	c.waitFor("the scheduler's reason for the third volume", time.Minute, func() bool {
		out, _ := c.try("get", "events", "--field-selector", "involvedObject.name=m2,reason=FailedScheduling", "-o", "jsonpath={.items[*].message}")
		return strings.Contains(out, "exceed max volume count")
	})
	if phase := c.jsonpath("pod/m2", "{.status.phase}"); phase != "Pending" {
		t.Errorf("third pod with a volume on %s: phase %s, want Pending", n, phase)
	}
	// Another node still takes one.
	c.apply(pvc("other", "berth", "16Mi", "Filesystem") + "---\n" + podOnNode("other", nodes[0], "other", "sleep 3600", "Never"))
	c.waitReady("other", 2*time.Minute)
	// One pod gone: the third one starts.
	c.kubectl("delete", "pod", "m0", "--wait=true")
	c.waitReady("m2", 2*time.Minute)
}
