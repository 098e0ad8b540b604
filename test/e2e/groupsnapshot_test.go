package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The classes group snapshots are tried on (hack/e2e-values.yaml), each pausing its
// writers its own way (docs/design.md, "Group snapshots"): the dir pool's by
// freezing the writing pod's cgroup, the image pool's by freezing the filesystem
// in each image (FIFREEZE). Both need reflinks: the nodes' /var/lib/berth is XFS.
var groupClasses = []struct {
	class, size string
}{
	{"berth", "64Mi"},
	{"berth-xfs", "300Mi"},
}

const (
	// counterScript counts, writing each value to /a/n, then to /b/n, each by a
	// rename (a reader sees a whole number, never a truncated file), for ever: at
	// any instant a == b or a == b+1.
	counterScript = "i=0; while true; do i=$((i+1)); " +
		"echo $i > /a/n.tmp && mv /a/n.tmp /a/n && echo $i > /b/n.tmp && mv /b/n.tmp /b/n || exit 1; done"
	// checkScript prints the two counters and fails unless they hold the invariant.
	checkScript = `a=$(cat /a/n) && b=$(cat /b/n) && echo "$a $b" && [ "$a" -ge 1 ] && ` +
		`{ [ "$a" -eq "$b" ] || [ "$a" -eq $((b + 1)) ]; }`
	// groupSnapshots is how many groups TestGroupSnapshot takes while the counter runs.
	groupSnapshots = 3
)

// pairPod is a busybox pod on node running script with claims a and b mounted at
// /a and /b.
func pairPod(name, node, a, b, script, restart string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s}
spec:
  restartPolicy: %s
  terminationGracePeriodSeconds: 1
  nodeSelector: {kubernetes.io/hostname: %s}
  containers:
  - name: main
    image: %s
    imagePullPolicy: IfNotPresent
    command: ["/bin/sh", "-c", %s]
    volumeMounts: [{name: a, mountPath: /a}, {name: b, mountPath: /b}]
  volumes:
  - name: a
    persistentVolumeClaim: {claimName: %s}
  - name: b
    persistentVolumeClaim: {claimName: %s}
`, name, restart, node, busybox, quote(script), a, b)
}

// groupedClaim is a claim labelled group=<group>, which a VolumeGroupSnapshot
// selects.
func groupedClaim(name, group, class, size string) string {
	return strings.Replace(pvc(name, class, size, "Filesystem"),
		"metadata: {name: "+name+"}", fmt.Sprintf("metadata: {name: %s, labels: {group: %s}}", name, group), 1)
}

// volumeGroupSnapshot takes the claims labelled group=<group>.
func volumeGroupSnapshot(name, class, group string) string {
	return fmt.Sprintf(`apiVersion: groupsnapshot.storage.k8s.io/v1
kind: VolumeGroupSnapshot
metadata: {name: %s}
spec:
  volumeGroupSnapshotClassName: %s
  source:
    selector:
      matchLabels: {group: %s}
`, name, class, group)
}

// groupNode is the node the group snapshots are taken on: a further node if there
// is one (its /var/lib/berth is an XFS disk of its own, hack/cluster-node.sh),
// else this one; skipped unless that node's /var/lib/berth can reflink (XFS).
func (c *cluster) groupNode() string {
	c.t.Helper()
	nodes := c.nodes()
	node := nodes[len(nodes)-1]
	out, err := c.nodeRun(node, "stat", "-f", "-c", "%T", "/var/lib/berth")
	if err != nil {
		c.t.Fatal(err)
	}
	if fs := strings.TrimSpace(out); fs != "xfs" {
		c.t.Skipf("group snapshots need reflinks; /var/lib/berth on node %s is %s", node, fs)
	}
	return node
}

// withGroupSnapshots turns the chart's group snapshots on for the test (rolled
// back at cleanup) and makes a VolumeGroupSnapshotClass for node, labelled for
// its csi-snapshotter (which reads classes through its node's label filter too),
// deleted at cleanup before the rollback. It returns the class's name.
func (c *cluster) withGroupSnapshots(helm, node string) string {
	c.t.Helper()
	c.withValues(helm, func(values map[string]any) {
		mapAt(mapAt(values, "sidecars"), "snapshotter")["groupSnapshots"] = true
	})
	class := c.ns
	c.apply(fmt.Sprintf(`apiVersion: groupsnapshot.storage.k8s.io/v1
kind: VolumeGroupSnapshotClass
metadata:
  name: %s
  labels: {snapshot.storage.kubernetes.io/managed-by: %s}
driver: berth.csi.io
deletionPolicy: Delete
`, class, node))
	c.t.Cleanup(func() {
		_, _ = c.tryNS("", "delete", "volumegroupsnapshotclass", class, "--wait=true", "--timeout=1m")
	})
	return class
}

// TestGroupSnapshot: with the chart's group snapshots on, a VolumeGroupSnapshot of
// two claims on one node is labelled for that node by its group-labeller, taken by
// its csi-snapshotter, and made of members restorable as claims (their contents
// labelled for the node too); each group taken while a pod counts across the two
// volumes (a then b) holds the pair at one instant (a == b or a == b+1). Deleted,
// the group takes its members with it. Claims on two nodes are refused: the group
// stays pending, with the labeller's event, and can be deleted.
func TestGroupSnapshot(t *testing.T) {
	helm := os.Getenv("BERTH_HELM")
	if helm == "" {
		t.Skip("needs BERTH_HELM, the helm binary make e2e uses, to turn the chart's group snapshots on")
	}
	c := setup(t, alone)
	node := c.groupNode()
	class := c.withGroupSnapshots(helm, node)
	// The subtests run at once, each in its namespace with claims and groups of its
	// own (a group selects claims of its namespace); the release is rolled back after
	// the last (the parent's cleanup).
	for _, tc := range groupClasses {
		t.Run(tc.class, func(t *testing.T) {
			t.Parallel()
			cs := setup(t, alone)
			cs.groupsUnderWrites(class, node, tc.class, tc.size)
		})
	}
	t.Run("across nodes", func(t *testing.T) {
		t.Parallel()
		cs := setup(t, alone)
		nodes := cs.needNodes(2)
		cs.groupAcrossNodes(class, node, nodes[0])
	})
}

// groupsUnderWrites runs the counter on claims a and b of class on node and takes
// groupSnapshots groups while it runs, each restored and checked, then deleted.
func (c *cluster) groupsUnderWrites(groupClass, node, class, size string) {
	t := c.t
	c.apply(groupedClaim("a", "pair", class, size) + "---\n" + groupedClaim("b", "pair", class, size))
	c.apply(pairPod("counter", node, "a", "b", counterScript, "Never"))
	c.waitReady("counter", 3*time.Minute)
	for _, claim := range []string{"a", "b"} {
		if got := c.nodeOf(claim); got != node {
			t.Fatalf("claim %s on node %q, want %s", claim, got, node)
		}
	}
	last := 0
	c.waitFor("the counter running", time.Minute, func() bool {
		out, _ := c.try("exec", "counter", "--", "cat", "/b/n")
		n, err := strconv.Atoi(strings.TrimSpace(out))
		return err == nil && n > 100
	})
	for i := 1; i <= groupSnapshots; i++ {
		vgs := fmt.Sprintf("g%d", i)
		c.apply(volumeGroupSnapshot(vgs, groupClass, "pair"))
		c.waitGroupReady(vgs, node)
		var members map[string]string
		c.waitFor("the member VolumeSnapshots of claims a and b in "+vgs, time.Minute, func() bool {
			members = c.groupMembers(vgs)
			return len(members) == 2 && members["a"] != "" && members["b"] != ""
		})
		// Their contents labelled for the node too, or deleting the group would
		// leave them.
		for _, snap := range members {
			c.waitFor("the content of member "+snap+" labelled for "+node, time.Minute, func() bool {
				vsc, _ := c.try("get", "volumesnapshot", snap, "-o", "jsonpath={.status.boundVolumeSnapshotContentName}")
				if vsc == "" {
					return false
				}
				label, _ := c.tryNS("", "get", "volumesnapshotcontent", vsc, "-o",
					`jsonpath={.metadata.labels.snapshot\.storage\.kubernetes\.io/managed-by}`)
				return label == node
			})
		}

		ra, rb := fmt.Sprintf("ra%d", i), fmt.Sprintf("rb%d", i)
		c.apply(claimFrom(ra, class, size, "VolumeSnapshot", members["a"]) + "---\n" +
			claimFrom(rb, class, size, "VolumeSnapshot", members["b"]))
		check := fmt.Sprintf("check%d", i)
		c.apply(pairPod(check, node, ra, rb, checkScript, "Never"))
		c.waitPhase(check, "Succeeded", 3*time.Minute) // fails with the pod's log otherwise
		var a, b int
		if _, err := fmt.Sscan(c.kubectl("logs", check), &a, &b); err != nil {
			t.Fatalf("%s: %v", check, err)
		}
		t.Logf("group %s: a=%d b=%d", vgs, a, b)
		if a <= last {
			t.Errorf("group %s holds counter %d, the one before %d: the counter did not run between them", vgs, a, last)
		}
		last = a
		c.kubectl("delete", "pod", check, "--wait=true")
		c.kubectl("delete", "pvc", ra, rb, "--wait=true", "--timeout=2m")

		if phase := c.jsonpath("pod/counter", "{.status.phase}"); phase != "Running" {
			logs, _ := c.try("logs", "counter")
			t.Fatalf("the counter is %s after group %s: %s", phase, vgs, logs)
		}
		c.deleteGroup(vgs, members)
	}
	c.kubectl("delete", "pod", "counter", "--wait=true")
	c.kubectl("delete", "pvc", "a", "b", "--wait=true", "--timeout=2m")
}

// waitGroupReady waits for the VolumeGroupSnapshot to be ready, its content
// labelled for node; on a timeout it logs what the objects and the node's
// group-labeller and csi-snapshotter say.
func (c *cluster) waitGroupReady(vgs, node string) {
	c.t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		out, _ := c.try("get", "volumegroupsnapshot", vgs, "-o", "jsonpath={.status.readyToUse}")
		if out == "true" {
			break
		}
		if time.Now().After(deadline) {
			c.groupDebug(vgs, node)
			c.t.Fatalf("timed out after 3m waiting for VolumeGroupSnapshot %s to be ready", vgs)
		}
		time.Sleep(time.Second)
	}
	content := c.jsonpath("volumegroupsnapshot/"+vgs, "{.status.boundVolumeGroupSnapshotContentName}")
	label := c.kubectlNS("", "get", "volumegroupsnapshotcontent", content, "-o",
		`jsonpath={.metadata.labels.snapshot\.storage\.kubernetes\.io/managed-by}`)
	if label != node {
		c.t.Errorf("content %s of %s labelled managed-by=%q, want %s", content, vgs, label, node)
	}
}

func (c *cluster) groupDebug(vgs, node string) {
	c.t.Helper()
	out, _ := c.try("get", "volumegroupsnapshot", vgs, "-o", "yaml")
	c.t.Logf("VolumeGroupSnapshot %s:\n%s", vgs, out)
	out, _ = c.tryNS("", "get", "volumegroupsnapshotcontents", "-o", "yaml")
	c.t.Logf("VolumeGroupSnapshotContents:\n%s", out)
	pod, _ := c.tryNS(driverNS, "get", "pods", "-l", "app.kubernetes.io/component=node",
		"--field-selector=spec.nodeName="+node, "-o", "jsonpath={.items[0].metadata.name}")
	for _, ct := range []string{"group-labeller", "csi-snapshotter", "berth"} {
		out, _ = c.tryNS(driverNS, "logs", pod, "-c", ct, "--tail=40")
		c.t.Logf("%s of %s:\n%s", ct, pod, out)
	}
}

// contentDebug logs a group content that outlived its VolumeGroupSnapshot (its
// deletion timestamp, finalizers, annotations and label tell which of the
// snapshot-controller, the group-labellers and the csi-snapshotters stopped), and
// what each of them logged about it.
func (c *cluster) contentDebug(content string) {
	c.t.Helper()
	out, _ := c.tryNS("", "get", "volumegroupsnapshotcontent", content, "-o", "yaml")
	c.t.Logf("VolumeGroupSnapshotContent %s:\n%s", content, out)
	mentions := func(logs string) string {
		var keep []string
		for _, l := range strings.Split(logs, "\n") {
			if strings.Contains(l, content) {
				keep = append(keep, l)
			}
		}
		return strings.Join(keep, "\n")
	}
	for _, ct := range []string{"group-labeller", "csi-snapshotter"} {
		out, _ = c.tryNS(driverNS, "logs", "-l", "app.kubernetes.io/component=node", "-c", ct, "--prefix", "--tail=-1")
		c.t.Logf("%ss on %s:\n%s", ct, content, mentions(out))
	}
	out, _ = c.tryNS("kube-system", "logs", "deploy/snapshot-controller", "--tail=-1")
	c.t.Logf("snapshot-controller on %s:\n%s", content, mentions(out))
}

// groupMembers maps each claim of a VolumeGroupSnapshot to its member
// VolumeSnapshot: the snapshot-controller makes them in the group's namespace,
// owned by the group.
func (c *cluster) groupMembers(vgs string) map[string]string {
	c.t.Helper()
	var list struct {
		Items []struct {
			Metadata struct {
				Name            string `json:"name"`
				OwnerReferences []struct {
					Kind string `json:"kind"`
					Name string `json:"name"`
				} `json:"ownerReferences"`
			} `json:"metadata"`
			Spec struct {
				Source struct {
					PersistentVolumeClaimName string `json:"persistentVolumeClaimName"`
				} `json:"source"`
			} `json:"spec"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(c.kubectl("get", "volumesnapshots", "-o", "json")), &list); err != nil {
		c.t.Fatal(err)
	}
	out := map[string]string{}
	for _, s := range list.Items {
		for _, o := range s.Metadata.OwnerReferences {
			if o.Kind == "VolumeGroupSnapshot" && o.Name == vgs {
				out[s.Spec.Source.PersistentVolumeClaimName] = s.Metadata.Name
			}
		}
	}
	return out
}

// deleteGroup deletes a VolumeGroupSnapshot and waits for its content and member
// VolumeSnapshots to be gone.
func (c *cluster) deleteGroup(vgs string, members map[string]string) {
	c.t.Helper()
	content := c.jsonpath("volumegroupsnapshot/"+vgs, "{.status.boundVolumeGroupSnapshotContentName}")
	// The snapshot-controller (v8.7.0) adds its bound finalizer to the group one pass
	// after binding it to its content; a group deleted in between goes at once and
	// its content stays for good (operations.md, "Group snapshots"). A user waits
	// for it as the test does.
	c.waitFor("the snapshot-controller's bound finalizer on "+vgs, time.Minute, func() bool {
		out, _ := c.try("get", "volumegroupsnapshot", vgs, "-o", "jsonpath={.metadata.finalizers}")
		return strings.Contains(out, "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-bound-protection")
	})
	c.kubectl("delete", "volumegroupsnapshot", vgs, "--wait=true", "--timeout=2m")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		_, err := c.tryNS("", "get", "volumegroupsnapshotcontent", content)
		if err != nil && strings.Contains(err.Error(), "NotFound") {
			break
		}
		if time.Now().After(deadline) {
			c.contentDebug(content)
			c.t.Fatalf("timed out after 2m waiting for VolumeGroupSnapshotContent %s of %s to be deleted", content, vgs)
		}
		time.Sleep(250 * time.Millisecond)
	}
	for _, s := range members {
		c.waitFor("member VolumeSnapshot "+s+" deleted", time.Minute, func() bool {
			_, err := c.try("get", "volumesnapshot", s)
			return err != nil && strings.Contains(err.Error(), "NotFound")
		})
	}
}

// groupAcrossNodes: claims cx on node and cy on other (not "y": YAML reads it as true) in one group: the content
// stays unlabelled, the VolumeGroupSnapshot pending with the labeller's event, and
// deleting it removes the content (its owner labels it for the sidecar to let go).
func (c *cluster) groupAcrossNodes(groupClass, node, other string) {
	t := c.t
	c.apply(groupedClaim("cx", "split", "berth", "16Mi") + "---\n" + groupedClaim("cy", "split", "berth", "16Mi"))
	c.apply(podOnNode("px", node, "cx", "sleep 3600", "Never") + "---\n" + podOnNode("py", other, "cy", "sleep 3600", "Never"))
	c.waitReady("px", 2*time.Minute)
	c.waitReady("py", 2*time.Minute)
	c.apply(volumeGroupSnapshot("split", groupClass, "split"))
	c.waitFor("the group-labeller's event on the group", 2*time.Minute, func() bool {
		out, _ := c.try("get", "events", "--field-selector", "involvedObject.name=split,reason=GroupSnapshotAcrossNodes",
			"-o", "jsonpath={.items[*].message}")
		return strings.Contains(out, "several")
	})
	var content string
	c.waitFor("the group's content", time.Minute, func() bool {
		content, _ = c.try("get", "volumegroupsnapshot", "split", "-o", "jsonpath={.status.boundVolumeGroupSnapshotContentName}")
		return content != ""
	})
	if ready := c.jsonpath("volumegroupsnapshot/split", "{.status.readyToUse}"); ready == "true" {
		t.Error("a group across nodes is ready")
	}
	if label := c.kubectlNS("", "get", "volumegroupsnapshotcontent", content, "-o",
		`jsonpath={.metadata.labels.snapshot\.storage\.kubernetes\.io/managed-by}`); label != "" {
		t.Errorf("content of a group across nodes labelled for %q", label)
	}
	c.deleteGroup("split", nil)
	c.kubectl("delete", "pod", "px", "py", "--wait=true")
	c.kubectl("delete", "pvc", "cx", "cy", "--wait=true", "--timeout=2m")
}
