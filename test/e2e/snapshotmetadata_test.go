package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// The external-snapshot-metadata sidecar's DaemonSet and the client image (hack/images.sh
// snapshot-metadata), and the API server's address for pods on the host network.
const (
	snapshotMetadataDS = "berth-snapshot-metadata"
	listerImage        = "berth.local/snapshot-metadata-lister:v1.0.0"
	apiServerHost      = "10.89.0.1"
	cbtBlock           = 4096
	// variableLength is the CSI SnapshotMetadata BlockMetadataType VARIABLE_LENGTH.
	variableLength = 2
)

// cbtRecord is one answer of the lister (snapshot-metadata-lister prints the
// sidecar project's iterator.IteratorMetadata records as one JSON list).
type cbtRecord struct {
	Type     int32 `json:"block_metadata_type"` // api.BlockMetadataType, a number in JSON
	Capacity int64 `json:"volume_capacity_bytes"`
	Blocks   []struct {
		Offset int64 `json:"byte_offset"`
		Size   int64 `json:"size_bytes"`
	} `json:"block_metadata"`
}

// TestSnapshotMetadata: changed-block tracking as a backup application sees it, through
// the external-snapshot-metadata sidecars the chart deploys (snapshotMetadata in
// hack/e2e-values.yaml): N random 4 KiB blocks written into a 10 GiB raw block volume
// between two snapshots are exactly what GetMetadataDelta lists (none missed; on XFS the
// extents are 4 KiB, so no extra either), asked on the snapshot's node and on another
// (whose plugin forwards the call to the snapshot's node), and GetMetadataAllocated of
// the first snapshot lists the data written before it, not the volume's unwritten
// 10 GiB. The
// client is Berth's lister on the sidecar project's own client library (it finds the
// SnapshotMetadataService object, gets a token for its audience, and dials its address
// over TLS with its CA), run in a pod on the sidecar's node with a service account
// holding upstream's client role.
func TestSnapshotMetadata(t *testing.T) {
	c := setup(t, parallel)
	node, other := c.snapshotMetadataNodes()

	c.apply(pvc("vol", "berth-xfs", "10Gi", "Block"))
	// 8 MiB of data at the start, before the first snapshot.
	c.apply(blockWriter("before", node, "dd if=/dev/urandom of=/dev/xvda bs=1M count=8 conv=fsync 2>&1"))
	c.waitPhase("before", "Succeeded", 3*time.Minute)
	c.kubectl("delete", "pod", "before", "--wait=true")
	c.snapshot("s1", "vol", 2*time.Minute)

	// N distinct random blocks across the whole volume, each written with random bytes.
	const n = 200
	written := map[int64]bool{}
	for len(written) < n {
		written[rand.Int64N(10<<30/cbtBlock)] = true
	}
	var script strings.Builder
	for _, b := range slices.Sorted(maps.Keys(written)) {
		fmt.Fprintf(&script, "dd if=/dev/urandom of=/dev/xvda bs=%d seek=%d count=1 conv=notrunc 2>/dev/null || exit 1\n", cbtBlock, b)
	}
	script.WriteString("sync\n")
	c.apply(blockWriter("between", node, script.String()))
	c.waitPhase("between", "Succeeded", 3*time.Minute)
	c.kubectl("delete", "pod", "between", "--wait=true")
	c.snapshot("s2", "vol", 2*time.Minute)

	c.listerAccess()
	start := time.Now()
	delta := c.listBlocks("delta", node, "-s", "s2", "-p", "s1")
	t.Logf("GetMetadataDelta through the sidecar: %v (the pod's whole life)", time.Since(start).Round(time.Millisecond))
	listed := blockSet(t, delta)
	var missed, extra []int64
	for b := range written {
		if !listed[b] {
			missed = append(missed, b)
		}
	}
	for b := range listed {
		if !written[b] {
			extra = append(extra, b)
		}
	}
	t.Logf("delta: %d blocks written, %d listed in %d answers; %d missed, %d extra", n, len(listed), len(delta), len(missed), len(extra))
	if len(missed) > 0 {
		slices.Sort(missed)
		t.Errorf("delta missed %d written blocks, e.g. %v", len(missed), missed[:min(5, len(missed))])
	}
	if len(extra) > 0 {
		slices.Sort(extra)
		t.Errorf("delta listed %d blocks never written (XFS extents are 4 KiB: none expected), e.g. %v", len(extra), extra[:min(5, len(extra))])
	}

	// Asked on another node, whose plugin forwards to the snapshot's node (the chart's
	// snapshotMetadata.forward): the same blocks.
	start = time.Now()
	remote := c.listBlocks("delta-elsewhere", other, "-s", "s2", "-p", "s1")
	t.Logf("GetMetadataDelta asked on node %s, forwarded to %s: %v (the pod's whole life)", other, node, time.Since(start).Round(time.Millisecond))
	if got, want := blockSet(t, remote), blockSet(t, delta); !maps.Equal(got, want) {
		t.Errorf("delta asked on node %s: %d blocks, on the snapshot's node %d", other, len(got), len(want))
	}

	alloc := c.listBlocks("allocated", node, "-s", "s1")
	var allocated int64
	covered := map[int64]bool{}
	for _, r := range alloc {
		for _, b := range r.Blocks {
			allocated += b.Size
			for o := b.Offset; o < b.Offset+b.Size && o < 8<<20; o += cbtBlock {
				covered[o/cbtBlock] = true
			}
		}
	}
	t.Logf("allocated in s1: %d bytes", allocated)
	if len(covered) != 8<<20/cbtBlock {
		t.Errorf("GetMetadataAllocated of s1 covers %d of the 2048 blocks written before it", len(covered))
	}
	// The image's filesystem-free raw device: only the 8 MiB written (XFS may keep
	// some speculative preallocation, listed as unwritten and so not at all).
	if allocated > 16<<20 {
		t.Errorf("GetMetadataAllocated of s1 lists %d bytes; 8 MiB were written into the 10 GiB volume", allocated)
	}
}

// snapshotMetadataNodes are the node of the test's volume, writers and first client
// (the last node, whose /var/lib/berth is an XFS disk of its own, 32 GiB: reflinks
// and room for 10 GiB and two snapshots of it) and another node with a ready
// external-snapshot-metadata sidecar, which asks for the same answers there. The
// test skips without the chart's sidecars, or without such nodes.
func (c *cluster) snapshotMetadataNodes() (node, other string) {
	c.t.Helper()
	if _, err := c.tryNS(driverNS, "get", "daemonset", snapshotMetadataDS); err != nil {
		c.t.Skipf("the chart's snapshotMetadata is off (no DaemonSet %s): %v", snapshotMetadataDS, err)
	}
	node = c.groupNode()
	c.waitFor("ready external-snapshot-metadata sidecars on node "+node+" and another", 2*time.Minute, func() bool {
		out, _ := c.tryNS(driverNS, "get", "pods", "-l", "app.kubernetes.io/component=snapshot-metadata",
			"-o", `jsonpath={range .items[?(@.status.containerStatuses[0].ready==true)]}{.spec.nodeName}{"\n"}{end}`)
		ready := strings.Fields(out)
		other = ""
		for _, n := range ready {
			if n != node && (other == "" || n == thisNode) {
				other = n // this machine's node if it is ready, for a run that does the same
			}
		}
		return slices.Contains(ready, node) && other != ""
	})
	return node, other
}

// blockSet is the 4 KiB blocks the answers list, checked to be whole aligned blocks
// of a 10 GiB volume.
func blockSet(t *testing.T, records []cbtRecord) map[int64]bool {
	t.Helper()
	set := map[int64]bool{}
	for _, r := range records {
		if r.Capacity != 10<<30 {
			t.Errorf("volume_capacity_bytes %d, want %d", r.Capacity, int64(10<<30))
		}
		for _, b := range r.Blocks {
			if b.Offset%cbtBlock != 0 || b.Size%cbtBlock != 0 || b.Size <= 0 {
				t.Fatalf("range %d+%d is not whole 4 KiB blocks", b.Offset, b.Size)
			}
			for o := b.Offset; o < b.Offset+b.Size; o += cbtBlock {
				set[o/cbtBlock] = true
			}
		}
	}
	return set
}

// blockWriter is a pod on node running script with the claim vol as /dev/xvda.
func blockWriter(name, node, script string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  nodeSelector: {kubernetes.io/hostname: %s}
  containers:
  - name: main
    image: %s
    command: ["/bin/sh", "-c", %s]
    volumeDevices: [{name: data, devicePath: /dev/xvda}]
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: vol}
`, name, node, busybox, quote(script))
}

// listerAccess gives the namespace's service account "lister" upstream's client role
// (deploy/snapshot-metadata-client-cluster-role.yaml): VolumeSnapshots and their
// contents, the SnapshotMetadataService objects, and tokens of its own.
func (c *cluster) listerAccess() {
	c.t.Helper()
	c.apply(fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: lister}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: %[1]s}
rules:
- apiGroups: [snapshot.storage.k8s.io]
  resources: [volumesnapshots, volumesnapshotcontents]
  verbs: [get, list, watch]
- apiGroups: [cbt.storage.k8s.io]
  resources: [snapshotmetadataservices]
  verbs: [get, list]
- apiGroups: [""]
  resources: [serviceaccounts/token]
  verbs: [create, get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: %[1]s}
subjects: [{kind: ServiceAccount, name: lister, namespace: %[1]s}]
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: %[1]s}
`, c.ns))
	c.t.Cleanup(func() {
		_, _ = c.tryNS("", "delete", "clusterrolebinding,clusterrole", c.ns, "--ignore-not-found")
	})
}

// listBlocks runs the lister with args in a pod named name on node (host network: the
// object's address is 127.0.0.1 in this cluster, hack/e2e-values.yaml) and returns its
// answers.
func (c *cluster) listBlocks(name, node string, args ...string) []cbtRecord {
	c.t.Helper()
	argv, _ := json.Marshal(append([]string{"-n", c.ns}, args...))
	var logs string
	// Unavailable is the spec's "try again": a backup application retries it. Seen
	// once in CI (the connection to the sidecar closed, EOF): each such failure is
	// logged with the sidecar's state on the node, and the call made again, twice at
	// most; any other failure ends the test.
	for attempt := 1; ; attempt++ {
		c.apply(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s}
spec:
  restartPolicy: Never
  serviceAccountName: lister
  hostNetwork: true
  nodeSelector: {kubernetes.io/hostname: %s}
  containers:
  - name: main
    image: %s
    imagePullPolicy: Never
    args: %s
    env:
    - {name: KUBERNETES_SERVICE_HOST, value: %q}
    - {name: KUBERNETES_SERVICE_PORT, value: "6443"}
`, name, node, listerImage, argv, apiServerHost))
		c.waitFor("lister pod "+name+" done", 3*time.Minute, func() bool {
			phase, _ := c.try("get", "pod", name, "-o", "jsonpath={.status.phase}")
			return phase == "Succeeded" || phase == "Failed"
		})
		logs = c.kubectl("logs", name)
		phase := c.jsonpath("pod/"+name, "{.status.phase}")
		if phase == "Succeeded" {
			break
		}
		if attempt == 3 || !strings.Contains(logs, "code = Unavailable") {
			c.t.Fatalf("lister %v: pod %s: %s", args, phase, logs)
		}
		c.t.Logf("lister %v on node %s, attempt %d: %s; the sidecar there: %s", args, node, attempt, strings.TrimSpace(logs), c.sidecarState(node))
		c.kubectl("delete", "pod", name, "--wait=true")
		time.Sleep(5 * time.Second)
	}
	var records []cbtRecord
	if err := json.Unmarshal([]byte(strings.TrimSpace(logs)), &records); err != nil {
		c.t.Fatalf("lister %v: %v: %.500s", args, err, logs)
	}
	for _, r := range records {
		if r.Type != variableLength {
			c.t.Errorf("lister %v: block_metadata_type %d, want VARIABLE_LENGTH (%d)", args, r.Type, variableLength)
		}
	}
	return records
}

// sidecarState is the external-snapshot-metadata sidecar's pod on node: its restarts,
// and the last lines of its log and of its previous run's, for a failure's record.
func (c *cluster) sidecarState(node string) string {
	pod, _ := c.tryNS(driverNS, "get", "pods", "-l", "app.kubernetes.io/component=snapshot-metadata",
		"--field-selector=spec.nodeName="+node, "-o", "jsonpath={.items[0].metadata.name} restarts={.items[0].status.containerStatuses[0].restartCount}")
	name, _, _ := strings.Cut(pod, " ")
	cur, _ := c.tryNS(driverNS, "logs", name, "--tail=10")
	prev, _ := c.tryNS(driverNS, "logs", name, "--previous", "--tail=10")
	return fmt.Sprintf("%s\nlog:\n%s\nprevious run:\n%s", pod, cur, prev)
}
