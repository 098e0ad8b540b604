package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// backupClass is the VolumeSnapshotClass of TestSharedPool/backups:
// its snapshots are backups kept in the cluster's shared pool.
const backupClass = "berth-backup-e2e"

// backupWriter fills /data on its first run (64 MiB of random data, a tree), adds a
// file on its second, and records every file's digest in /data/sums each time.
const backupWriter = `set -e
cd /data
if [ ! -e big ]; then
  head -c 67108864 /dev/urandom > big
  mkdir -p d && echo linked > d/a && ln d/a d/hard && ln -s /etc/passwd out
else
  head -c 4194304 /dev/urandom > second
fi
find . -type f ! -name sums -exec md5sum {} + > sums
sync`

// backupAndRecoverAfterNodeLost (TestSharedPool/backups, on the release with the
// cluster's GlusterFS pool): a claim on one node is backed up twice with a
// VolumeSnapshotClass naming that pool as backupPool (the second backup links what
// did not change); the node is then stopped for good (kubelet, containerd, the
// plugin and the pods frozen), and kubectl berth recover rebuilds the claim on
// another node from the latest backup, keeping its name. The restored data is the
// backup's (the write after it is lost, as the report says). A static
// VolumeSnapshotContent naming the backup's handle, as Velero's CSI restore makes
// one, restores it on a third node.
func backupAndRecoverAfterNodeLost(c *cluster) {
	t := c.t
	nodes := c.needNodes(3)
	lost, target, velero := nodes[1], nodes[2], nodes[0]
	bin := filepath.Join(t.TempDir(), "kubectl-berth")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/kubectl-berth").CombinedOutput(); err != nil {
		t.Fatalf("build kubectl-berth: %v\n%s", err, out)
	}
	c.apply(fmt.Sprintf(`apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata: {name: %s}
driver: berth.csi.io
deletionPolicy: Delete
parameters: {backupPool: %s}
`, backupClass, sharedPoolName))
	var oldPV string
	// Runs before the release is rolled back (TestSharedPool's cleanup), so that
	// the backups are deleted by plugins that still serve the shared pool.
	t.Cleanup(func() { c.cleanBackups(oldPV) })

	c.apply(pvc("data", "berth", "256Mi", "Filesystem") + "---\n" + podOnNode("writer", lost, "data", backupWriter, "Never"))
	c.waitPhase("writer", "Succeeded", 5*time.Minute)
	c.kubectl("delete", "pod", "writer", "--wait=true")
	oldPV = c.jsonpath("pvc/data", "{.spec.volumeName}")
	first := c.backup("b1", "data")
	c.apply(podOnNode("writer2", lost, "data", backupWriter, "Never"))
	c.waitPhase("writer2", "Succeeded", 5*time.Minute)
	c.kubectl("delete", "pod", "writer2", "--wait=true")
	second := c.backup("b2", "data")

	// The second backup is incremental: its record on the shared filesystem.
	var rec struct {
		Backup struct {
			Base         string `json:"base"`
			WrittenBytes int64  `json:"writtenBytes"`
			LinkedBytes  int64  `json:"linkedBytes"`
		} `json:"backup"`
	}
	raw, err := os.ReadFile(filepath.Join(clusterShared, "snapshots", second[len(second)-32:], "record.json"))
	if err != nil || json.Unmarshal(raw, &rec) != nil {
		t.Fatalf("record of backup %s: %v\n%s", second, err, raw)
	}
	t.Logf("second backup: %+v", rec.Backup)
	if rec.Backup.Base != first || rec.Backup.LinkedBytes < 64<<20 || rec.Backup.WrittenBytes > 8<<20 {
		t.Errorf("second backup %+v: want it based on %s, the 64 MiB unchanged file linked, about 4 MiB written", rec.Backup, first)
	}

	// A pod goes on writing after the last backup: that write is what is lost.
	c.apply(podOnNode("app", lost, "data", "echo after-backup > /data/lost-write && sync && sleep 3600", "Never"))
	c.waitReady("app", 2*time.Minute)
	thaw := c.freezeNode(lost)
	t.Cleanup(thaw)
	frozenAt := time.Now()
	c.waitFor("node "+lost+" not ready", 3*time.Minute, func() bool {
		s, _ := c.tryNS("", "get", "node", lost, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		return s == "Unknown" || s == "False"
	})
	t.Logf("node %s not ready %s after it was frozen", lost, time.Since(frozenAt).Round(time.Second))

	start := time.Now()
	cmd := exec.Command(bin, "recover", "data", "--to", target, "-n", c.ns, "-o", "json", "--timeout", "5m")
	var progress strings.Builder
	cmd.Stderr = &progress
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl berth recover: %v\n%s%s", err, progress.String(), out)
	}
	t.Logf("kubectl berth recover took %s:\n%s%s", time.Since(start).Round(time.Second), progress.String(), out)
	var report struct {
		Snapshot, LostNode, TargetNode, OldPV, NewPV string
		SnapshotHandle                               string   `json:"snapshotHandle"`
		DeletedPods                                  []string `json:"deletedPods"`
		LostWindowSeconds                            float64  `json:"lostWindowSeconds"`
	}
	if err := json.Unmarshal(out, &report); err != nil {
		t.Fatalf("recover's JSON: %v\n%s", err, out)
	}
	if report.Snapshot != "b2" || report.SnapshotHandle != second || report.LostNode != lost || report.TargetNode != target ||
		report.OldPV != oldPV || report.NewPV == "" || report.NewPV == oldPV || strings.Join(report.DeletedPods, ",") != c.ns+"/app" || report.LostWindowSeconds <= 0 {
		t.Errorf("recover's report: %+v; want b2 (%s) from %s to %s, old PV %s, pod app deleted", report, second, lost, target, oldPV)
	}
	if got := c.nodeOf("data"); got != target {
		t.Errorf("the recovered claim's PV names node %q, want %q", got, target)
	}
	checkRestored := "cd /data && md5sum -c sums >/dev/null && test -e second && test ! -e lost-write && test \"$(readlink out)\" = /etc/passwd"
	c.apply(podOnNode("reader", target, "data", checkRestored, "Never"))
	c.waitPhase("reader", "Succeeded", 3*time.Minute)

	// Velero's CSI restore: a VolumeSnapshotContent naming the backup's handle
	// (deletionPolicy Retain), a VolumeSnapshot bound to it, a claim from that.
	content := "velero-" + c.ns
	c.apply(fmt.Sprintf(`apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotContent
metadata: {name: %s}
spec:
  deletionPolicy: Retain
  driver: berth.csi.io
  source: {snapshotHandle: %s}
  volumeSnapshotClassName: %s
  volumeSnapshotRef: {name: velero, namespace: %s}
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: velero}
spec:
  volumeSnapshotClassName: %s
  source: {volumeSnapshotContentName: %s}
`, content, second, backupClass, c.ns, backupClass, content))
	ready := func() bool {
		s, _ := c.try("get", "volumesnapshot", "velero", "-o", "jsonpath={.status.readyToUse}")
		return s == "true"
	}
	// Berth's part is the content's status (its node's csi-snapshotter asks the
	// driver); the VolumeSnapshot's is the snapshot-controller's. That took minutes
	// more in CI runs with the content ready at once, and failed one: the controller
	// ran on the node frozen above (hack/cluster-up.sh now keeps it on localhost).
	// Waited for up to 10 minutes, Velero's own default (--csi-snapshot-timeout),
	// each time logged.
	staticStart := time.Now()
	var contentReady time.Duration
	for deadline := time.Now().Add(10 * time.Minute); !ready(); time.Sleep(2 * time.Second) {
		if contentReady == 0 {
			if s, _ := c.tryNS("", "get", "volumesnapshotcontent", content, "-o", "jsonpath={.status.readyToUse}"); s == "true" {
				contentReady = time.Since(staticStart)
			}
		}
		if time.Now().After(deadline) {
			vsc, _ := c.tryNS("", "get", "volumesnapshotcontent", content, "-o", "yaml")
			logs, _ := c.tryNS(driverNS, "logs", "-l", "app.kubernetes.io/component=node", "-c", "group-labeller", "--tail=5", "--prefix")
			snap, _ := c.tryNS(driverNS, "logs", "-l", "app.kubernetes.io/component=node", "-c", "csi-snapshotter", "--tail=30", "--prefix")
			t.Fatalf("the static VolumeSnapshot is not ready after 10 minutes (its content after %s); its content:\n%s\ngroup-labellers:\n%s\ncsi-snapshotters:\n%s", contentReady.Round(time.Second), vsc, logs, snap)
		}
	}
	t.Logf("static VolumeSnapshot velero ready in %s, its content %s in %s", time.Since(staticStart).Round(time.Second), content, contentReady.Round(time.Second))
	c.apply(claimFrom("velero", "berth", "256Mi", "VolumeSnapshot", "velero") + "---\n" +
		podOnNode("velero-reader", velero, "velero", checkRestored, "Never"))
	c.waitPhase("velero-reader", "Succeeded", 3*time.Minute)
	if got := c.nodeOf("velero"); got != velero {
		t.Errorf("the claim restored from the static content is on %q, want %q", got, velero)
	}
}

// backup takes VolumeSnapshot name of claim with backupClass, waits until it is
// ready, and returns its handle, which must name the shared pool.
func (c *cluster) backup(name, claim string) string {
	c.t.Helper()
	c.apply(fmt.Sprintf(`apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: %s}
spec:
  volumeSnapshotClassName: %s
  source: {persistentVolumeClaimName: %s}
`, name, backupClass, claim))
	start := time.Now()
	c.waitFor("backup "+name+" readyToUse", 5*time.Minute, func() bool {
		out, _ := c.try("get", "volumesnapshot", name, "-o", "jsonpath={.status.readyToUse}")
		return out == "true"
	})
	vsc := c.jsonpath("volumesnapshot/"+name, "{.status.boundVolumeSnapshotContentName}")
	handle := c.kubectlNS("", "get", "volumesnapshotcontent", vsc, "-o", "jsonpath={.status.snapshotHandle}")
	c.t.Logf("backup %s (%s) ready in %s", name, handle, time.Since(start).Round(time.Second))
	if !strings.HasPrefix(handle, "s1-"+sharedPoolName+"-") {
		c.t.Fatalf("backup %s has handle %q, want one of pool %s", name, handle, sharedPoolName)
	}
	return handle
}

// cleanBackups deletes what TestSharedPool/backups made outside its
// namespace's lifetime: its pods and claims, its snapshots (their backups on the
// shared filesystem with them), the static content, the class, and the lost
// node's volume (its PV, kept with Retain by the recovery, set back to Delete).
func (c *cluster) cleanBackups(oldPV string) {
	_, _ = c.try("delete", "pods", "--all", "--wait=true", "--grace-period=1", "--timeout=2m")
	_, _ = c.try("delete", "volumesnapshots", "--all", "--wait=true", "--timeout=3m")
	_, _ = c.try("delete", "pvc", "--all", "--wait=true", "--timeout=2m")
	_, _ = c.tryNS("", "delete", "volumesnapshotcontent", "velero-"+c.ns, "--ignore-not-found", "--wait=true", "--timeout=1m")
	_, _ = c.tryNS("", "delete", "volumesnapshotclass", backupClass, "--ignore-not-found")
	if oldPV != "" {
		_, _ = c.tryNS("", "patch", "pv", oldPV, "--type=merge", "-p", `{"spec":{"persistentVolumeReclaimPolicy":"Delete"}}`)
		_, _ = c.tryNS("", "wait", "--for=delete", "pv/"+oldPV, "--timeout=2m")
	}
	if out, _ := c.tryNS("", "get", "volumesnapshotcontents", "-o", "jsonpath={.items[*].status.snapshotHandle}"); strings.Contains(out, "s1-"+sharedPoolName+"-") {
		c.t.Errorf("backups left behind: %s", out)
	}
}

// freezeNode stops a further node for good, as far as the cluster can tell: every
// process of its PID namespace (kubelet, containerd, the shims) gets SIGSTOP and
// its pods' cgroups (the kubelet's cgroup root, the node plugin's pod included)
// are frozen. The returned func undoes both.
func (c *cluster) freezeNode(node string) func() {
	c.t.Helper()
	init := c.nodeInit(node)
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", init))
	if err != nil {
		c.t.Fatal(err)
	}
	freezer := filepath.Join("/sys/fs/cgroup/freezer", "berth-cluster-"+node, "freezer.state")
	if err := os.WriteFile(freezer, []byte("FROZEN"), 0o644); err != nil {
		c.t.Fatalf("freeze the pods of %s: %v", node, err)
	}
	var stopped []int
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, _ := strconv.Atoi(filepath.Base(d))
		if l, err := os.Readlink(filepath.Join(d, "ns", "pid")); err == nil && l == ns && pid != init {
			if syscall.Kill(pid, syscall.SIGSTOP) == nil {
				stopped = append(stopped, pid)
			}
		}
	}
	c.t.Logf("node %s frozen: %d processes stopped, its pods' cgroups frozen", node, len(stopped))
	done := false
	return func() {
		if done {
			return
		}
		done = true
		for _, pid := range stopped {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
		if err := os.WriteFile(freezer, []byte("THAWED"), 0o644); err != nil {
			c.t.Errorf("thaw the pods of %s: %v", node, err)
		}
		_, _ = c.tryNS("", "wait", "--for=condition=Ready", "node/"+node, "--timeout=3m")
	}
}
