package node_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/quota"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

// chproject does what `chattr -p id` in a pod in the host user namespace does to a
// file it owns (dir: `chattr -P -p id` on a directory, the inherit flag set).
func chproject(t *testing.T, path string, id uint32) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	if err := quota.SetFileProject(fd, id, st.Mode&unix.S_IFMT == unix.S_IFDIR); err != nil {
		t.Fatal(err)
	}
}

// projectOf reads the project ID of path, which is not a symlink.
func projectOf(t *testing.T, path string) (uint32, bool) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	id, inherit, err := quota.FileProject(fd)
	if err != nil {
		t.Fatal(err)
	}
	return id, inherit
}

// A pod that owns its files may charge them to project 0 (no limit) or to a
// neighbour's ID. The project scan finds every such entry, charges it back to the
// volume's ID, and the volume's health says how many it reset.
func TestQuotaProjectIDChangedIsReset(t *testing.T) {
	forEachQuotaFS(t, func(t *testing.T, f *kindFixture) {
		r := f.create(t, "pvc-escape", 8<<20, nil, rwo)
		nb := f.create(t, "pvc-neighbour", 64<<20, nil, rwo)
		target := f.publishQuota(t, r, "pod")
		data := f.pool.DataPath(r.Hash())
		if r.ProjectID == nb.ProjectID+1 || r.ProjectID+1 == nb.ProjectID {
			t.Fatalf("project IDs %d and %d of two volumes are neighbours", r.ProjectID, nb.ProjectID)
		}

		// The escape: a directory moved to project 0, and everything made in it after.
		escape := filepath.Join(target, "escape")
		if err := os.Mkdir(escape, 0o755); err != nil {
			t.Fatal(err)
		}
		chproject(t, escape, 0)
		if err := os.MkdirAll(filepath.Join(escape, "a", "b"), 0o755); err != nil {
			t.Fatal(err)
		}
		blob := createFile(t, filepath.Join(escape, "a", "b", "blob"))
		n, err := fillUnprivileged(t, blob, r.CapacityBytes+4<<20)
		if err != nil {
			t.Fatalf("the escape itself failed: %v after %d bytes", err, n)
		}
		// A file charged to the neighbour, a directory that lost the inherit flag,
		// and entries the scan must skip without opening them.
		onNeighbour := filepath.Join(target, "theirs")
		if err := os.WriteFile(onNeighbour, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		chproject(t, onNeighbour, nb.ProjectID)
		plain := filepath.Join(target, "plain")
		if err := os.Mkdir(plain, 0o755); err != nil {
			t.Fatal(err)
		}
		clearInherit(t, plain)
		if err := unix.Mkfifo(filepath.Join(target, "fifo"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/etc/passwd", filepath.Join(target, "link")); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mknod(filepath.Join(target, "null"), unix.S_IFCHR|0o644, int(unix.Mkdev(1, 3))); err != nil {
			t.Fatal(err)
		}
		healthy(t, f, r.ID, target, "before the scan")

		// A budget of 2 entries makes the scan pause several times on the way.
		got := f.pool.ScanProjects(context.Background(), storage.ProjectScan{Budget: 2, Pause: time.Millisecond})
		// escape, a, b, blob, theirs, plain
		if got != 6 {
			t.Fatalf("the scan reset %d entries, want 6", got)
		}
		if f.pool.ProjectResets() != 6 {
			t.Fatalf("ProjectResets() = %d, want 6", f.pool.ProjectResets())
		}
		for _, p := range []string{escape, filepath.Join(escape, "a"), filepath.Join(escape, "a", "b"), plain, data} {
			if id, inherit := projectOf(t, p); id != r.ProjectID || !inherit {
				t.Fatalf("%s: project %d inherit %v after the scan, want %d with the inherit flag", p, id, inherit, r.ProjectID)
			}
		}
		for _, p := range []string{blob.Name(), onNeighbour} {
			if id, _ := projectOf(t, p); id != r.ProjectID {
				t.Fatalf("%s: project %d after the scan, want %d", p, id, r.ProjectID)
			}
		}
		// The escaped bytes count against the volume again: it is over its limit.
		if n, err := fillUnprivileged(t, blob, 1<<20); !overQuota(err) {
			t.Fatalf("writing after the reset: %v after %d bytes, want EDQUOT or ENOSPC", err, n)
		}
		if u, err := quota.Get(f.cfg.Path, nb.ProjectID); err != nil || u.UsedInodes > 1 {
			t.Fatalf("the neighbour's project holds %d inodes (err %v), want its data directory only", u.UsedInodes, err)
		}

		// The volume's health names the finding; the neighbour's stays clean.
		resp, err := f.srv.NodeGetVolumeHealth(context.Background(), &csi.NodeGetVolumeHealthRequest{VolumeId: r.ID, VolumePublishPath: target})
		wantCode(t, err, codes.OK)
		var found bool
		for _, h := range resp.GetVolumeHealth().GetHealthStatuses() {
			if h.GetReason() == "ProjectIDChanged" {
				found = true
				if h.GetStatus() != csi.VolumeHealthErrorType_DEGRADED || !strings.HasPrefix(h.GetMessage(), "6 entries") {
					t.Fatalf("ProjectIDChanged: %v %q, want DEGRADED naming 6 entries", h.GetStatus(), h.GetMessage())
				}
			}
		}
		if !found {
			t.Fatalf("health of the volume after the scan: %v, want ProjectIDChanged", resp.GetVolumeHealth())
		}
		healthy(t, f, nb.ID, "", "the neighbour")

		// A second scan finds nothing new.
		if got := f.pool.ScanProjects(context.Background(), storage.ProjectScan{}); got != 0 {
			t.Fatalf("a second scan reset %d entries, want 0", got)
		}
		if err := os.Truncate(blob.Name(), 0); err != nil {
			t.Fatal(err)
		}
	})
}

// clearInherit removes the inherit flag from directory dir, keeping its project.
func clearInherit(t *testing.T, dir string) {
	t.Helper()
	id, _ := projectOf(t, dir)
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := quota.SetFileProject(fd, id, false); err != nil {
		t.Fatal(err)
	}
}

// healthy fails unless the volume reports no ProjectIDChanged problem.
func healthy(t *testing.T, f *kindFixture, id, target, when string) {
	t.Helper()
	resp, err := f.srv.NodeGetVolumeHealth(context.Background(), &csi.NodeGetVolumeHealthRequest{VolumeId: id, VolumePublishPath: target})
	wantCode(t, err, codes.OK)
	for _, h := range resp.GetVolumeHealth().GetHealthStatuses() {
		if h.GetReason() == "ProjectIDChanged" {
			t.Fatalf("%s: health %q", when, h.GetMessage())
		}
	}
}

// The embedded default pool's kind, auto, becomes a quota pool where the
// filesystem enforces project quotas: its volumes' sizes are enforced out of the
// box, and it says nothing is missing.
func TestQuotaAutoPoolEnforcesSizes(t *testing.T) {
	forEachQuotaFSKind(t, storage.KindAuto, func(t *testing.T, f *kindFixture) {
		if k := f.pool.Kind(); k != storage.KindQuota {
			t.Fatalf("auto pool with prjquota became %q, want %q", k, storage.KindQuota)
		}
		if err := f.pool.SizesNotEnforced(); err != nil || len(f.engine.Notices()) != 0 {
			t.Fatalf("SizesNotEnforced() = %v, notices %q on a quota pool", err, f.engine.Notices())
		}
		r := f.create(t, "pvc-full", 16<<20, nil, rwo)
		target := f.publishQuota(t, r, "pod")
		n, err := fillUnprivileged(t, createFile(t, filepath.Join(target, "blob")), r.CapacityBytes+1<<20)
		if !overQuota(err) || n > r.CapacityBytes {
			t.Fatalf("writing %d bytes into a %d-byte volume of the auto pool: %v after %d bytes, want EDQUOT or ENOSPC",
				r.CapacityBytes+1<<20, r.CapacityBytes, err, n)
		}
		// A restart keeps the kind: it is read from the pool, not probed again.
		g := f.restartKind(t)
		if k := g.pool.Kind(); k != storage.KindQuota {
			t.Fatalf("after a restart the auto pool is %q, want %q", k, storage.KindQuota)
		}
	})
}

// An auto pool on a filesystem that does not enforce project quotas is served as a
// dir pool and says so.
func TestQuotaAutoPoolFallsBackOnPlainXFS(t *testing.T) {
	mnt := testutil.MountFS(t, testutil.XFSPlain, 320<<20)
	f := newKindFixture(t, storage.KindAuto, filepath.Join(mnt, "pool"))
	if err := f.engine.Unserved(); err != nil {
		t.Fatalf("auto pool on xfs without prjquota is not served: %v", err)
	}
	if k := f.pool.Kind(); k != storage.KindDir {
		t.Fatalf("auto pool on xfs without prjquota became %q, want %q", k, storage.KindDir)
	}
	if err := f.pool.SizesNotEnforced(); err == nil || !strings.Contains(err.Error(), "not mounted with prjquota") {
		t.Fatalf("SizesNotEnforced() = %v, want it to say xfs lacks prjquota", err)
	}
}
