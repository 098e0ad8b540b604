package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The driver's name, and the lease its elected csi-resizer holds (one per cluster):
// only the driver of that resizer's node receives ControllerModifyVolume
// (docs/design.md, "Where ControllerModifyVolume runs").
const (
	driverName    = "berth.csi.io"
	resizerLease  = "external-resizer-berth-csi-io"
	ioReadBytes   = 4 << 20 // what each measurement reads
	ioLimitBytes  = 1 << 20 // the limited class's readBytesPerSecond
	ioMeasureWait = 2 * time.Minute
)

// TestIOLimitsVolumeAttributesClass: a pod on the node of the elected resizer reads
// its volume (dd iflag=direct, past the page cache); once the claim's
// volumeAttributesClassName names a class with readBytesPerSecond 1Mi, its reads
// fall under 1 MiB/s, and once it names a class with readBytesPerSecond "0" they
// rise above it again. The limit is the pod's, written into its cgroup by the
// driver (storage/nodeio.go), for the device of the pool the volume lies on.
func TestIOLimitsVolumeAttributesClass(t *testing.T) {
	c := setup(t, alone)
	if out, _ := c.tryNS("", "api-resources", "--api-group=storage.k8s.io", "-o", "name"); !strings.Contains(out, "volumeattributesclasses") {
		t.Skip("the cluster serves no VolumeAttributesClass (storage.k8s.io)")
	}
	node := c.resizerNode()
	limited, unlimited := c.ns+"-read-1mi", c.ns+"-unlimited"
	for name, rate := range map[string]string{limited: "1Mi", unlimited: "0"} {
		c.fromManifest("apply", fmt.Sprintf(`apiVersion: storage.k8s.io/v1
kind: VolumeAttributesClass
metadata: {name: %s}
driverName: %s
parameters:
  readBytesPerSecond: %q
`, name, driverName, rate))
		t.Cleanup(func() {
			_, _ = kubectlBare("delete", "volumeattributesclass", name, "--ignore-not-found", "--wait=false")
		})
	}
	c.apply(pvc("data", "berth", "64Mi", "Filesystem") + "---\n" +
		podOnNode("reader", node, "data", "dd if=/dev/urandom of=/data/f bs=1M count=16 && sync && touch /data/ready && sleep 3600", "Never"))
	c.waitReady("reader", 3*time.Minute)
	c.waitFor("the reader's file", time.Minute, func() bool {
		_, err := c.try("exec", "reader", "--", "test", "-e", "/data/ready")
		return err == nil
	})
	t.Logf("unlimited read on %s: %.2f MiB/s", node, c.readRate("reader")/(1<<20))

	c.setClass("data", limited)
	c.waitRate("reader", "under the 1 MiB/s limit", func(r float64) bool { return r < 1.2*ioLimitBytes })

	c.setClass("data", unlimited)
	c.waitRate("reader", "above 1 MiB/s once the limit is lifted", func(r float64) bool { return r > 2*ioLimitBytes })
}

// resizerNode is the node of the csi-resizer that holds the driver's lease. The
// sidecar's identity is its hostname (csi-lib-utils' leader election, with every
// character but [a-zA-Z0-9-] made "-"): its pod's name, or its node's hostname on
// the host network.
func (c *cluster) resizerNode() string {
	c.t.Helper()
	var holder string
	c.waitFor("a csi-resizer leader (lease "+resizerLease+")", 2*time.Minute, func() bool {
		holder, _ = c.tryNS(driverNS, "get", "lease", resizerLease, "-o", "jsonpath={.spec.holderIdentity}")
		holder = strings.TrimSpace(holder)
		return holder != ""
	})
	out := c.kubectlNS(driverNS, "get", "pods", "-l", "app.kubernetes.io/component=node", "-o",
		`jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{"\n"}{end}`)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		pod, node, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		hostname := c.kubectlNS("", "get", "node", node, "-o", `jsonpath={.metadata.labels.kubernetes\.io/hostname}`)
		// On the host network a pod's hostname is its machine's, which the node's
		// name and label need not be (this machine's node is "localhost").
		uts, _ := c.nodeRun(node, "hostname")
		for _, id := range []string{pod, node, hostname, strings.TrimSpace(uts)} {
			if id != "" && leaderIdentity(id) == holder {
				return node
			}
		}
	}
	c.t.Fatalf("lease %s is held by %q, which is no node plugin pod's name, node or hostname:\n%s", resizerLease, holder, out)
	return ""
}

// leaderIdentity is what csi-lib-utils' leader election makes of an identity.
func leaderIdentity(id string) string {
	id = regexp.MustCompile(`[^a-zA-Z0-9-]`).ReplaceAllString(id, "-")
	if strings.HasSuffix(id, "-") {
		id += "X"
	}
	return id
}

// setClass sets the claim's VolumeAttributesClass and waits until the resizer has
// applied it (status.currentVolumeAttributesClassName), failing early on a
// modification marked Infeasible.
func (c *cluster) setClass(claim, class string) {
	c.t.Helper()
	c.kubectl("patch", "pvc", claim, "--type=merge", "-p", fmt.Sprintf(`{"spec":{"volumeAttributesClassName":%q}}`, class))
	c.waitFor("claim "+claim+" modified to class "+class, 3*time.Minute, func() bool {
		if st, _ := c.try("get", "pvc", claim, "-o", "jsonpath={.status.modifyVolumeStatus.status}"); st == "Infeasible" {
			events, _ := c.try("get", "events", "--field-selector=involvedObject.name="+claim)
			c.t.Fatalf("modification of %s to %s is Infeasible:\n%s", claim, class, events)
		}
		cur, _ := c.try("get", "pvc", claim, "-o", "jsonpath={.status.currentVolumeAttributesClassName}")
		return cur == class
	})
}

// readRate reads ioReadBytes of the pod's file with O_DIRECT and returns the rate, in
// bytes per second, timed inside the pod by /proc/uptime (10 ms steps) around dd:
// busybox's dd prints no bytes-and-seconds summary.
func (c *cluster) readRate(pod string) float64 {
	c.t.Helper()
	out := c.kubectl("exec", pod, "--", "sh", "-c",
		fmt.Sprintf("read a _ </proc/uptime; dd if=/data/f of=/dev/null bs=64k count=%d iflag=direct 2>/dev/null || exit 1; read b _ </proc/uptime; echo $a $b",
			ioReadBytes/(64<<10)))
	f := strings.Fields(out)
	if len(f) != 2 {
		c.t.Fatalf("read timing: %q", out)
	}
	start, err1 := strconv.ParseFloat(f[0], 64)
	end, err2 := strconv.ParseFloat(f[1], 64)
	if err1 != nil || err2 != nil || end < start {
		c.t.Fatalf("read timing: %q", out)
	}
	return float64(ioReadBytes) / max(end-start, 0.01)
}

// waitRate measures the pod's read rate until ok holds for it.
func (c *cluster) waitRate(pod, what string, ok func(bytesPerSecond float64) bool) {
	c.t.Helper()
	var last float64
	deadline := time.Now().Add(ioMeasureWait)
	for {
		last = c.readRate(pod)
		if ok(last) {
			c.t.Logf("read %s: %.2f MiB/s", what, last/(1<<20))
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("read rate %.2f MiB/s, want it %s (after %v)", last/(1<<20), what, ioMeasureWait)
		}
		time.Sleep(2 * time.Second)
	}
}
