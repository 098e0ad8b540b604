package e2e

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// crossNodeTree is written into a claim by a pod: 1 GiB of random data (set
// BERTH_E2E_XNODE_MIB for less), a tree with a hard link, a sparse file, a
// symlink pointing out of the volume, a fifo, modes and owners of its own.
const crossNodeTree = `set -e
cd /data
head -c $((MIB*1048576)) /dev/urandom > big
mkdir -p d/e && echo linked > d/a && ln d/a d/hard && chmod 0640 d/a
echo nested > d/e/f && chown 1234:5678 d/e/f && chmod 0711 d/e
ln -s /etc/passwd out
mkfifo fifo
dd if=/dev/urandom of=sparse bs=4096 count=1 seek=10000 2>/dev/null
sync`

// treeListing describes the tree under dir on node: each entry's path, type,
// mode, owner, size (not of directories), link count, mtime and symlink target, sorted; the regular
// files' digests; hard-linked names' inode pairs; user xattrs.
func (c *cluster) treeListing(node, dir string) string {
	c.t.Helper()
	// A directory's size is its filesystem's business (XFS and ext4 differ).
	script := `cd "$1" && { find . ! -type d -printf '%p %y %m %U:%G %s %n %T@ %l\n'; find . -type d -printf '%p %y %m %U:%G %n %T@\n'; } | sort &&
find . -type f ! -name big -exec md5sum {} + | sort && sha256sum big &&
[ "$(stat -c %i d/a)" = "$(stat -c %i d/hard)" ] && echo hardlinked &&
getfattr --absolute-names -h -d -m '^(user|trusted)\.' -R . 2>/dev/null | grep -v '^$' | sort`
	out, err := c.nodeRun(node, "bash", "-c", script, "listing", dir)
	if err != nil {
		c.t.Fatalf("listing %s on %s: %v", dir, node, err)
	}
	return out
}

// A snapshot restored, and a claim cloned, on other nodes than the one holding
// their source: each new volume is provisioned on the node its pod was scheduled
// to, its data pulled over the transfer channel from the source's node, and it
// holds the source's tree as it was (data, hard links, holes, xattrs, owners,
// modes, times, the symlink and the fifo), compared on both nodes' disks.
func TestCrossNodeRestoreAndClone(t *testing.T) {
	c := setup(t, alone)
	nodes := c.needNodes(3)
	src, restoreOn, cloneOn := nodes[1], nodes[2], nodes[0]
	mib := envOr("BERTH_E2E_XNODE_MIB", "1024")
	n, err := strconv.Atoi(mib)
	if err != nil || n < 1 {
		t.Fatalf("BERTH_E2E_XNODE_MIB=%q: a number of MiB", mib)
	}
	size := fmt.Sprintf("%dMi", n+64)

	c.apply(pvc("src", "berth", size, "Filesystem") + "---\n" +
		podOnNode("writer", src, "src", "MIB="+mib+"\n"+crossNodeTree, "Never"))
	c.waitPhase("writer", "Succeeded", 10*time.Minute)
	c.kubectl("delete", "pod", "writer", "--wait=true")
	srcDir := filepath.Join(c.hostPathOf("src", defaultPool), "data")
	// user.* where Linux allows it (regular files, directories), trusted.* on the
	// symlink and the fifo.
	for f, ns := range map[string]string{"big": "user", "d/a": "user", "d/e": "user", "out": "trusted", "fifo": "trusted"} {
		if _, err := c.nodeRun(src, "setfattr", "-h", "-n", ns+".berth", "-v", "kept-"+f, filepath.Join(srcDir, f)); err != nil {
			t.Fatal(err)
		}
	}
	want := c.treeListing(src, srcDir)
	if !strings.Contains(want, "hardlinked") || strings.Count(want, ".berth=") != 6 {
		t.Fatalf("the source's listing lacks the link or the xattrs:\n%s", want)
	}

	c.snapshot("snap", "src", 5*time.Minute)

	start := time.Now()
	c.apply(claimFrom("restored", "berth", size, "VolumeSnapshot", "snap") + "---\n" +
		podOnNode("read-restored", restoreOn, "restored", "ls /data > /dev/null", "Never") + "---\n" +
		claimFrom("cloned", "berth", size, "PersistentVolumeClaim", "src") + "---\n" +
		podOnNode("read-cloned", cloneOn, "cloned", "ls /data > /dev/null", "Never"))
	for _, tc := range []struct{ claim, pod, node string }{
		{"restored", "read-restored", restoreOn},
		{"cloned", "read-cloned", cloneOn},
	} {
		c.waitPhase(tc.pod, "Succeeded", 15*time.Minute)
		t.Logf("%s on %s: its pod ran %s after the claims were made", tc.claim, tc.node, time.Since(start).Round(time.Second))
		if got := c.nodeOf(tc.claim); got != tc.node {
			t.Errorf("%s: PV node affinity names %q, want %q", tc.claim, got, tc.node)
		}
		got := c.treeListing(tc.node, filepath.Join(c.hostPathOf(tc.claim, defaultPool), "data"))
		if got != want {
			t.Errorf("%s on %s differs from the source on %s:\n--- source\n%s\n--- %s\n%s", tc.claim, tc.node, src, want, tc.claim, got)
		}
		sparse, err := c.nodeRun(tc.node, "stat", "-c", "%b %B", filepath.Join(c.hostPathOf(tc.claim, defaultPool), "data", "sparse"))
		var blocks, unit int64
		if _, serr := fmt.Sscan(sparse, &blocks, &unit); err != nil || serr != nil || blocks*unit > 1<<20 {
			t.Errorf("%s: the sparse file allocates %q (%v): its hole was filled", tc.claim, sparse, err)
		}
	}
}
