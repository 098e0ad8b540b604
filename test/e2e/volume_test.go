package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A claim written by one pod is read, byte for byte, by the next pod on the same claim.
func TestDataOutlivesPod(t *testing.T) {
	c := setup(t, parallel)
	c.apply(pvc("data", "berth", "64Mi", "Filesystem"))
	c.apply(podOn("writer", "data", "head -c 4194304 /dev/urandom > /data/blob && sync && md5sum /data/blob | cut -d' ' -f1", "Never"))
	c.waitPhase("writer", "Succeeded", 2*time.Minute)
	want := strings.TrimSpace(c.kubectl("logs", "writer"))
	if c.jsonpath("pvc/data", "{.status.phase}") != "Bound" {
		t.Fatal("claim not bound")
	}
	c.kubectl("delete", "pod", "writer", "--wait=true")
	c.apply(podOn("reader", "data", "md5sum /data/blob | cut -d' ' -f1", "Never"))
	c.waitPhase("reader", "Succeeded", 2*time.Minute)
	if got := strings.TrimSpace(c.kubectl("logs", "reader")); got != want || len(want) != 32 {
		t.Errorf("reader md5 %q, writer md5 %q", got, want)
	}
}

// A container killed with SIGKILL is restarted by the kubelet and finds its data.
func TestContainerKilledKeepsData(t *testing.T) {
	c := setup(t, parallel)
	c.apply(pvc("data", "berth", "64Mi", "Filesystem"))
	c.apply(podOn("app", "data", "echo start >> /data/starts; sleep 3600", "Always"))
	c.waitReady("app", 2*time.Minute)
	id := c.jsonpath("pod/app", "{.status.containerStatuses[0].containerID}")
	id = strings.TrimPrefix(id, "containerd://")
	ctr := []string{"--address", envOr("BERTH_CONTAINERD_SOCK", "/run/berth-containerd/containerd.sock"), "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id}
	if out, err := exec.Command("ctr", ctr...).CombinedOutput(); err != nil {
		t.Fatalf("ctr kill: %v: %s", err, out)
	}
	c.waitFor("container restart", 2*time.Minute, func() bool {
		n, _ := c.try("get", "pod", "app", "-o", "jsonpath={.status.containerStatuses[0].restartCount}")
		ready, _ := c.try("get", "pod", "app", "-o", "jsonpath={.status.containerStatuses[0].ready}")
		return n != "" && n != "0" && ready == "true"
	})
	if got := c.kubectl("exec", "app", "--", "cat", "/data/starts"); got != "start\nstart\n" {
		t.Errorf("/data/starts after a kill = %q, want two starts", got)
	}
}

// The node plugin pod deleted and recreated by its DaemonSet while a volume is in use:
// the volume stays mounted and writable, and new publishes work.
func TestNodePluginRestart(t *testing.T) {
	c := setup(t, alone)
	c.apply(pvc("data", "berth", "64Mi", "Filesystem"))
	c.apply(podOn("app", "data", "while true; do date >> /data/log; sleep 0.2; done", "Always"))
	c.waitReady("app", 2*time.Minute)
	old := strings.TrimSpace(c.kubectlNS(driverNS, "get", "pods", "-l", "app.kubernetes.io/component=node", onThisNode, "-o", "jsonpath={.items[0].metadata.name}"))
	c.kubectlNS(driverNS, "delete", "pod", old, "--wait=true")
	c.waitFor("a new node plugin pod ready", 3*time.Minute, func() bool {
		out, _ := c.tryNS(driverNS, "get", "pods", "-l", "app.kubernetes.io/component=node", onThisNode, "-o",
			`jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[0] != old && f[1] == "True" {
				return true
			}
		}
		return false
	})
	before := lines(c.kubectl("exec", "app", "--", "cat", "/data/log"))
	time.Sleep(2 * time.Second)
	if after := lines(c.kubectl("exec", "app", "--", "cat", "/data/log")); after <= before {
		t.Errorf("the volume stopped being written after the plugin restart (%d -> %d lines)", before, after)
	}
	c.kubectl("exec", "app", "--", "touch", "/data/after-restart")
	// A new claim and pod are published by the new plugin.
	c.apply(pvc("data2", "berth", "64Mi", "Filesystem"))
	c.apply(podOn("app2", "data2", "echo ok > /data/x && cat /data/x", "Never"))
	c.waitPhase("app2", "Succeeded", 2*time.Minute)
}

// Expansion of an xfs image volume, online, seen by the pod.
func TestExpandXFSImage(t *testing.T) {
	c := setup(t, parallel)
	c.apply(pvc("data", "berth-xfs", "300Mi", "Filesystem"))
	c.apply(podOn("app", "data", "sleep 3600", "Never"))
	c.waitReady("app", 2*time.Minute)
	size := func() int64 {
		out := c.kubectl("exec", "app", "--", "df", "-k", "/data")
		f := strings.Fields(lastLine(out))
		n, _ := strconv.ParseInt(f[1], 10, 64)
		return n
	}
	before := size()
	c.kubectl("patch", "pvc", "data", "-p", `{"spec":{"resources":{"requests":{"storage":"600Mi"}}}}`)
	c.waitFor("capacity 600Mi on the claim", 3*time.Minute, func() bool {
		out, _ := c.try("get", "pvc", "data", "-o", "jsonpath={.status.capacity.storage}")
		return out == "600Mi"
	})
	c.waitFor("the filesystem grown in the pod", 2*time.Minute, func() bool { return size() > before+200*1024 })
	c.kubectl("exec", "app", "--", "sh", "-c", "head -c 400000000 /dev/zero > /data/big && sync")
}

// A raw block volume from an image pool: bytes written to the device are read back by
// another pod.
func TestRawBlock(t *testing.T) {
	c := setup(t, parallel)
	c.apply(pvc("blk", "berth-xfs", "64Mi", "Block"))
	blockPod := func(name, script string) string {
		return `apiVersion: v1
kind: Pod
metadata: {name: ` + name + `}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: ` + busybox + `
    command: ["/bin/sh", "-c", ` + quote(script) + `]
    volumeDevices: [{name: data, devicePath: /dev/xvda}]
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: blk}
`
	}
	c.apply(blockPod("w", "echo berth-block-data | dd of=/dev/xvda bs=512 count=1 conv=sync,fsync 2>/dev/null"))
	c.waitPhase("w", "Succeeded", 2*time.Minute)
	c.kubectl("delete", "pod", "w", "--wait=true")
	c.apply(blockPod("r", "dd if=/dev/xvda bs=512 count=1 2>/dev/null | head -1"))
	c.waitPhase("r", "Succeeded", 2*time.Minute)
	if got := strings.TrimSpace(strings.Trim(c.kubectl("logs", "r"), "\x00")); got != "berth-block-data" {
		t.Errorf("block device read %q", got)
	}
}

// A CSI ephemeral inline volume: created with the pod, gone with it.
func TestEphemeralInline(t *testing.T) {
	c := setup(t, parallel)
	c.apply(`apiVersion: v1
kind: Pod
metadata: {name: eph}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: ` + busybox + `
    command: ["/bin/sh", "-c", "echo inline > /scratch/f && cat /scratch/f"]
    volumeMounts: [{name: scratch, mountPath: /scratch}]
  volumes:
  - name: scratch
    csi:
      driver: berth.csi.io
      volumeAttributes: {size: 16Mi}
`)
	c.waitPhase("eph", "Succeeded", 2*time.Minute)
	if got := strings.TrimSpace(c.kubectl("logs", "eph")); got != "inline" {
		t.Errorf("inline volume read %q", got)
	}
}

// reclaimPolicy Delete removes the data from the host; Retain keeps it.
func TestReclaimPolicies(t *testing.T) {
	inGroup(t, parallel)
	for _, tc := range []struct {
		class    string
		wantKept bool
	}{{"berth", false}, {"berth-retain", true}} {
		t.Run(tc.class, func(t *testing.T) {
			c := setup(t, parallel)
			c.apply(pvc("data", tc.class, "64Mi", "Filesystem"))
			c.apply(podOn("w", "data", "echo keep-me > /data/f && sync", "Never"))
			c.waitPhase("w", "Succeeded", 2*time.Minute)
			dir := c.hostPathOf("data", defaultPool)
			pv := c.jsonpath("pvc/data", "{.spec.volumeName}")
			if b, err := os.ReadFile(filepath.Join(dir, "data", "f")); err != nil || string(b) != "keep-me\n" {
				t.Fatalf("data on the host at %s: %q %v", dir, b, err)
			}
			c.kubectl("delete", "pod", "w", "--wait=true")
			c.kubectl("delete", "pvc", "data", "--wait=true")
			if tc.wantKept {
				c.waitFor("PV released", time.Minute, func() bool {
					out, _ := c.tryNS("", "get", "pv", pv, "-o", "jsonpath={.status.phase}")
					return out == "Released"
				})
				if _, err := os.Stat(filepath.Join(dir, "data", "f")); err != nil {
					t.Errorf("Retain: data gone from the host: %v", err)
				}
				// The admin reclaims it (docs/operations.md, "Retained volumes"): the released PV's
				// policy set to Delete makes the provisioner delete the volume, so
				// the run leaves no data behind in the pool.
				c.kubectlNS("", "patch", "pv", pv, "-p", `{"spec":{"persistentVolumeReclaimPolicy":"Delete"}}`)
				c.waitFor("PV deleted", 2*time.Minute, func() bool {
					_, err := c.tryNS("", "get", "pv", pv)
					return err != nil
				})
			}
			c.waitFor("volume removed from the host", 2*time.Minute, func() bool {
				_, err := os.Stat(dir)
				return os.IsNotExist(err)
			})
		})
	}
}

// An existing host directory adopted as a static PV (docs/adopting-host-directories.md):
// the pod sees the host's file, and the host sees the pod's.
func TestAdoptedHostDirectory(t *testing.T) {
	c := setup(t, parallel)
	root := envOr("BERTH_E2E_ADOPT_ROOT", "/var/lib/berth-adopt")
	dir := filepath.Join(root, c.ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "from-host"), []byte("host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pvName := "adopted-" + c.ns
	c.apply(`apiVersion: v1
kind: PersistentVolume
metadata: {name: ` + pvName + `}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {namespace: ` + c.ns + `, name: adopted}
  csi:
    driver: berth.csi.io
    volumeHandle: ` + pvName + `
    volumeAttributes: {path: ` + dir + `}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {key: topology.berth.csi.io/node, operator: In, values: [localhost]}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: adopted}
spec:
  storageClassName: ""
  volumeName: ` + pvName + `
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
`)
	t.Cleanup(func() { _, _ = c.tryNS("", "delete", "pv", pvName, "--wait=false") })
	before := map[string]os.FileInfo{}
	for _, p := range []string{dir, filepath.Join(dir, "from-host")} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		before[p] = fi
	}
	// The pod asks for an fsGroup: it starts, as with a hostPath volume, and the host
	// directory keeps its group and modes (the kubelet delegates fsGroup to Berth,
	// which never applies it to an adopted directory).
	pod := strings.Replace(podOn("p", "adopted", "cat /data/from-host && echo pod > /data/from-pod", "Never"),
		"spec:\n", "spec:\n  securityContext: {fsGroup: 4321}\n", 1)
	c.apply(pod)
	c.waitPhase("p", "Succeeded", 2*time.Minute)
	if got := c.kubectl("logs", "p"); got != "host\n" {
		t.Errorf("pod read %q from the adopted directory", got)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "from-pod")); err != nil || string(b) != "pod\n" {
		t.Errorf("host reads %q %v from the pod's write", b, err)
	}
	for p, was := range before {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		gid, wasGID := fi.Sys().(*syscall.Stat_t).Gid, was.Sys().(*syscall.Stat_t).Gid
		if gid != wasGID || fi.Mode() != was.Mode() {
			t.Errorf("%s: group %d mode %s after a pod with fsGroup 4321, was %d %s", p, gid, fi.Mode(), wasGID, was.Mode())
		}
	}
}

func (c *cluster) tryNS(ns string, args ...string) (string, error) {
	saved := c.ns
	defer func() { c.ns = saved }()
	c.ns = ns
	if ns == "" {
		c.ns = "default"
	}
	return c.try(args...)
}

func (c *cluster) kubectlNS(ns string, args ...string) string {
	c.t.Helper()
	out, err := c.tryNS(ns, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func lines(s string) int { return strings.Count(s, "\n") }

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}
