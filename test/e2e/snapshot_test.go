package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The classes snapshots, restores and clones are tried on: a dir pool and an image pool
// (hack/e2e-values.yaml). The image pool's xfs needs 300 MiB.
var snapshotClasses = []struct {
	class, pool, size string
}{
	{"berth", defaultPool, "64Mi"},
	{"berth-xfs", "/var/lib/berth/images", "300Mi"},
}

const (
	// writeScript fills a claim with random bytes, a nested file and a symlink, and
	// prints a digest of it all; digestScript prints the same digest.
	writeScript = "head -c 4194304 /dev/urandom > /data/blob && mkdir -p /data/d/e && " +
		"echo nested > /data/d/e/f && ln -s d/e/f /data/link && sync && " + digestScript
	digestScript = "cd /data && { md5sum blob d/e/f; readlink link; } | md5sum | cut -d' ' -f1"
)

// claimFrom is a claim whose content comes from a VolumeSnapshot or another claim.
func claimFrom(name, class, size, kind, source string) string {
	group := ""
	if kind == "VolumeSnapshot" {
		group = "apiGroup: snapshot.storage.k8s.io, "
	}
	return claimWith(name, class, size, "Filesystem", fmt.Sprintf("  dataSource: {%skind: %s, name: %s}\n", group, kind, source))
}

// writeSource creates the claim src, fills it and returns its digest.
func (c *cluster) writeSource(class, size string) string {
	c.t.Helper()
	c.apply(pvc("src", class, size, "Filesystem"))
	c.apply(podOn("writer", "src", writeScript, "Never"))
	c.waitPhase("writer", "Succeeded", 2*time.Minute)
	want := strings.TrimSpace(c.kubectl("logs", "writer"))
	if len(want) != 32 {
		c.t.Fatalf("writer printed %q, not a digest", want)
	}
	c.kubectl("delete", "pod", "writer", "--wait=true")
	return want
}

// digestOf runs a pod on claim and returns the digest of what it reads.
func (c *cluster) digestOf(claim string) string {
	c.t.Helper()
	pod := "read-" + claim
	c.apply(podOn(pod, claim, digestScript, "Never"))
	c.waitPhase(pod, "Succeeded", 3*time.Minute)
	return strings.TrimSpace(c.kubectl("logs", pod))
}

// A claim is snapshotted; the snapshot is on the host, and a claim restored from it
// reads the bytes of the moment it was taken, not those written to the source after.
// Deleting the VolumeSnapshot removes the snapshot from the host.
func TestSnapshotRestore(t *testing.T) {
	inGroup(t, parallel)
	for _, tc := range snapshotClasses {
		t.Run(tc.class, func(t *testing.T) {
			c := setup(t, parallel)
			want := c.writeSource(tc.class, tc.size)
			c.snapshot("snap", "src", 3*time.Minute)
			content := c.jsonpath("volumesnapshot/snap", "{.status.boundVolumeSnapshotContentName}")
			handle := c.kubectlNS("", "get", "volumesnapshotcontent", content, "-o", "jsonpath={.status.snapshotHandle}")
			dir := snapshotHostPath(t, handle, tc.pool)
			if _, err := os.Stat(filepath.Join(dir, "record.json")); err != nil {
				t.Fatalf("snapshot %s not on the host: %v", handle, err)
			}

			// The source changes after the snapshot; the restored claim must not see it.
			c.apply(podOn("change", "src", "echo changed >> /data/blob && rm /data/d/e/f && sync", "Never"))
			c.waitPhase("change", "Succeeded", 2*time.Minute)
			c.kubectl("delete", "pod", "change", "--wait=true")

			c.apply(claimFrom("restored", tc.class, tc.size, "VolumeSnapshot", "snap"))
			if got := c.digestOf("restored"); got != want {
				t.Errorf("restored claim reads digest %q, the source had %q when snapshotted", got, want)
			}
			if got := c.digestOf("src"); got == want {
				t.Errorf("the source still reads %q after it was changed", got)
			}

			c.kubectl("delete", "volumesnapshot", "snap", "--wait=true", "--timeout=2m")
			c.waitFor("VolumeSnapshotContent deleted", 2*time.Minute, func() bool {
				_, err := c.tryNS("", "get", "volumesnapshotcontent", content)
				return err != nil && strings.Contains(err.Error(), "NotFound")
			})
			c.waitFor("snapshot removed from the host", time.Minute, func() bool {
				_, err := os.Stat(dir)
				return os.IsNotExist(err)
			})
			// The restored claim does not depend on the snapshot.
			if got := c.digestOf("restored"); got != want {
				t.Errorf("restored claim reads %q after its snapshot was deleted, want %q", got, want)
			}
		})
	}
}

// A claim cloned from another reads the same bytes, and the two are independent.
func TestClone(t *testing.T) {
	inGroup(t, parallel)
	for _, tc := range snapshotClasses {
		t.Run(tc.class, func(t *testing.T) {
			c := setup(t, parallel)
			want := c.writeSource(tc.class, tc.size)
			c.apply(claimFrom("clone", tc.class, tc.size, "PersistentVolumeClaim", "src"))
			if got := c.digestOf("clone"); got != want {
				t.Fatalf("clone reads digest %q, source %q", got, want)
			}
			c.apply(podOn("change", "clone", "echo changed >> /data/blob && sync", "Never"))
			c.waitPhase("change", "Succeeded", 2*time.Minute)
			c.kubectl("delete", "pod", "change", "--wait=true")
			if got := c.digestOf("src"); got != want {
				t.Errorf("source reads %q after its clone was written, want %q", got, want)
			}
		})
	}
}

// snapshotHostPath maps a snapshot ID s1-<pool>-<hash> to its directory on this node.
func snapshotHostPath(t *testing.T, handle, poolPath string) string {
	t.Helper()
	i := strings.LastIndex(handle, "-")
	if !strings.HasPrefix(handle, "s1-") || i < 0 {
		t.Fatalf("snapshot handle %q is not a Berth snapshot ID", handle)
	}
	return filepath.Join(poolPath, "snapshots", handle[i+1:])
}

// snapshot takes the VolumeSnapshot name of claim with the berth class and waits
// until it is ready to use.
func (c *cluster) snapshot(name, claim string, timeout time.Duration) {
	c.t.Helper()
	c.apply(fmt.Sprintf(`apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: %s}
spec:
  volumeSnapshotClassName: berth
  source: {persistentVolumeClaimName: %s}
`, name, claim))
	c.waitFor("VolumeSnapshot "+name+" readyToUse", timeout, func() bool {
		out, _ := c.try("get", "volumesnapshot", name, "-o", "jsonpath={.status.readyToUse}")
		return out == "true"
	})
}
