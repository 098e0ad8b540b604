package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	"google.golang.org/grpc/status"
)

func TestQuotaPoolUnserved(t *testing.T) {
	for _, tc := range []struct {
		name string
		fs   testutil.FS
		size int64
	}{
		{"xfs without prjquota", testutil.XFSPlain, 320 << 20},
		{"ext4 without the project feature", testutil.Ext4Plain, 64 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mnt := testutil.MountFS(t, tc.fs, tc.size)
			f := newKindFixture(t, storage.KindQuota, filepath.Join(mnt, "pool"))
			// Start succeeded (newKindFixture checks it), but the pool is not served.
			err := f.engine.Unserved()
			if err == nil || !strings.Contains(err.Error(), f.cfg.Name) {
				t.Fatalf("Unserved() = %v, want an error naming pool %s", err, f.cfg.Name)
			}
			_, err = f.ctrl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
				Name: "pvc-unserved", CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20},
				VolumeCapabilities: []*csi.VolumeCapability{rwo},
			})
			wantCode(t, err, codes.Unavailable)
			if n := len(f.engine.AllVolumes()); n != 0 {
				t.Fatalf("%d volumes in a pool that is not served", n)
			}
			resp, err := f.ctrl.GetCapacity(context.Background(), &csi.GetCapacityRequest{})
			wantCode(t, err, codes.OK)
			if resp.GetAvailableCapacity() != 0 || resp.GetMaximumVolumeSize().GetValue() != 0 {
				t.Fatalf("capacity %d, maximum %v of a pool that is not served, want zero",
					resp.GetAvailableCapacity(), resp.GetMaximumVolumeSize())
			}
		})
	}
}

// quotaFilesystems are the filesystems that enforce quota pools' limits.
var quotaFilesystems = []testutil.FS{testutil.XFSPrjQuota, testutil.Ext4PrjQuota}

// forEachQuotaFS runs test on a served quota pool on each filesystem that enforces
// project quotas. It skips, naming the reason, where the kernel cannot enforce them.
func forEachQuotaFS(t *testing.T, test func(t *testing.T, f *kindFixture)) {
	forEachQuotaFSKind(t, storage.KindQuota, test)
}

// forEachQuotaFSKind is forEachQuotaFS on a pool of kind (quota, or auto).
func forEachQuotaFSKind(t *testing.T, kind string, test func(t *testing.T, f *kindFixture)) {
	for _, fs := range quotaFilesystems {
		t.Run(fs.Name, func(t *testing.T) {
			testutil.RequireQuotaKernel(t)
			mnt := testutil.MountFS(t, fs, 512<<20)
			f := newKindFixture(t, kind, filepath.Join(mnt, "pool"))
			if err := f.engine.Unserved(); err != nil {
				t.Fatalf("%s pool on %s with prjquota is not served: %v", kind, fs.Name, err)
			}
			test(t, f)
		})
	}
}

// publishQuota stages (a no-op for a quota volume) and publishes r at a pod target.
func (f *kindFixture) publishQuota(t *testing.T, r *storage.Record, pod string) string {
	t.Helper()
	staging := f.stage(t, r)
	target := f.target(t, pod)
	f.publishStaged(t, r, staging, target)
	return target
}

// overQuota reports an error by which a filesystem refuses a write past a project
// limit: ENOSPC on XFS, EDQUOT on ext4.
func overQuota(err error) bool { return errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.ENOSPC) }

// fillUnprivileged is fill without CAP_SYS_RESOURCE.
func fillUnprivileged(t *testing.T, fh *os.File, limit int64) (n int64, err error) {
	t.Helper()
	if perr := testutil.WithoutSysResource(func() error { n, err = fill(fh, limit); return nil }); perr != nil {
		t.Fatal(perr)
	}
	return n, err
}

func TestQuotaWriteBeyondCapacity(t *testing.T) {
	forEachQuotaFS(t, func(t *testing.T, f *kindFixture) {
		r := f.create(t, "pvc-full", 16<<20, nil, rwo)
		target := f.publishQuota(t, r, "pod")
		n, err := fillUnprivileged(t, createFile(t, filepath.Join(target, "blob")), r.CapacityBytes+1<<20)
		if !overQuota(err) {
			t.Fatalf("writing %d bytes into a %d-byte volume: %v after %d bytes, want EDQUOT or ENOSPC", r.CapacityBytes+1<<20, r.CapacityBytes, err, n)
		}
		if n > r.CapacityBytes {
			t.Fatalf("%d bytes written into a %d-byte volume", n, r.CapacityBytes)
		}
		b, _ := f.usage(t, r.ID, target)
		if b.GetTotal() != r.CapacityBytes || b.GetUsed() < n {
			t.Fatalf("stats total %d used %d, want total %d and at least %d used", b.GetTotal(), b.GetUsed(), r.CapacityBytes, n)
		}
	})
}

func TestQuotaInodeLimit(t *testing.T) {
	forEachQuotaFS(t, func(t *testing.T, f *kindFixture) {
		for _, bad := range []string{"0", "-1", "many", ""} {
			_, err := f.ctrl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
				Name: "pvc-bad-inodes", CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20},
				VolumeCapabilities: []*csi.VolumeCapability{rwo},
				Parameters:         map[string]string{storage.ParamInodeLimit: bad},
			})
			if got := status.Code(err); got != codes.InvalidArgument {
				t.Fatalf("inodeLimit %q: code %s (err %v), want InvalidArgument", bad, got, err)
			}
		}
		const limit = 8
		r := f.create(t, "pvc-inodes", 16<<20, map[string]string{storage.ParamInodeLimit: fmt.Sprint(limit)}, rwo)
		target := f.publishQuota(t, r, "pod")
		var created int
		err := testutil.WithoutSysResource(func() error {
			for created < 2*limit {
				if err := os.WriteFile(filepath.Join(target, fmt.Sprint("f", created)), nil, 0o644); err != nil {
					return err
				}
				created++
			}
			return nil
		})
		// The data directory itself is one of the volume's inodes.
		if !overQuota(err) || created >= limit {
			t.Fatalf("created %d files under an inode limit of %d, then %v; want EDQUOT or ENOSPC", created, limit, err)
		}
		_, i := f.usage(t, r.ID, target)
		if i.GetTotal() != limit {
			t.Fatalf("inodes total %d, want the limit %d", i.GetTotal(), limit)
		}
	})
}

func TestQuotaExpand(t *testing.T) {
	forEachQuotaFS(t, func(t *testing.T, f *kindFixture) {
		r := f.create(t, "pvc-grow", 8<<20, nil, rwo)
		target := f.publishQuota(t, r, "pod")
		fh := createFile(t, filepath.Join(target, "blob"))
		if n, err := fillUnprivileged(t, fh, r.CapacityBytes+1<<20); !overQuota(err) {
			t.Fatalf("filling the volume: %v after %d bytes, want EDQUOT or ENOSPC", err, n)
		}
		resp, err := f.expand(r, "", target, 16<<20, 0)
		wantCode(t, err, codes.OK)
		if resp.GetCapacityBytes() != 16<<20 {
			t.Fatalf("capacity_bytes %d, want %d", resp.GetCapacityBytes(), 16<<20)
		}
		if n, err := fillUnprivileged(t, fh, 4<<20); err != nil {
			t.Fatalf("writing 4 MiB more after expansion: %v after %d bytes", err, n)
		}
		for _, tc := range []struct {
			name     string
			required int64
			wantCode codes.Code
		}{
			{"same size again", 16 << 20, codes.OK},
			{"smaller than the volume", 8 << 20, codes.OutOfRange},
		} {
			_, err := f.expand(r, "", target, tc.required, 0)
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("%s: code %s (err %v), want %s", tc.name, got, err, tc.wantCode)
			}
		}
	})
}

func TestQuotaGetCapacity(t *testing.T) {
	forEachQuotaFS(t, func(t *testing.T, f *kindFixture) {
		capacity := func() int64 {
			resp, err := f.ctrl.GetCapacity(context.Background(), &csi.GetCapacityRequest{})
			wantCode(t, err, codes.OK)
			return resp.GetAvailableCapacity()
		}
		// With more promised than the filesystem's own overhead, the promises bound
		// what is available.
		f.create(t, "pvc-base", 64<<20, nil, rwo)
		c0 := capacity()
		a := f.create(t, "pvc-a", 32<<20, nil, rwo)
		b := f.create(t, "pvc-b", 16<<20, nil, rwo)
		if got, want := capacity(), c0-a.CapacityBytes-b.CapacityBytes; got != want {
			t.Fatalf("available %d after two volumes, want %d", got, want)
		}
		want := c0 - b.CapacityBytes
		for _, r := range []*storage.Record{a, b} {
			_, err := f.ctrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: r.ID})
			wantCode(t, err, codes.OK)
			if got := capacity(); got != want {
				t.Fatalf("available %d after deleting %s, want %d", got, r.Name, want)
			}
			want = c0
		}
	})
}

// recordedProject reads the project ID from the volume's record.json on disk.
func (f *kindFixture) recordedProject(t *testing.T, r *storage.Record) uint32 {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(f.pool.VolumeDir(r.Hash()), "record.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		ProjectID uint32 `json:"projectID"`
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	return rec.ProjectID
}

func TestQuotaProjectIDs(t *testing.T) {
	forEachQuotaFS(t, func(t *testing.T, f *kindFixture) {
		a := f.create(t, "pvc-a", 1<<20, nil, rwo)
		b := f.create(t, "pvc-b", 1<<20, nil, rwo)
		ids := map[uint32]string{}
		for _, r := range []*storage.Record{a, b} {
			id := f.recordedProject(t, r)
			if id < storage.ProjectIDBase || id != r.ProjectID {
				t.Fatalf("%s: project ID %d in record.json, %d in the index; want one ID >= %d", r.Name, id, r.ProjectID, storage.ProjectIDBase)
			}
			if onDisk, err := quota.Project(f.pool.DataPath(r.Hash())); err != nil || onDisk != id {
				t.Fatalf("%s: data directory has project %d (err %v), want %d", r.Name, onDisk, err, id)
			}
			if other, ok := ids[id]; ok {
				t.Fatalf("%s and %s share project ID %d", other, r.Name, id)
			}
			ids[id] = r.Name
		}
		// After a restart the IDs in the records stay taken.
		g := f.restartKind(t)
		c := g.create(t, "pvc-c", 1<<20, nil, rwo)
		if other, ok := ids[c.ProjectID]; ok {
			t.Fatalf("after a restart, pvc-c got project ID %d of %s", c.ProjectID, other)
		}
	})
}

// fsImmutableFL is FS_IMMUTABLE_FL of linux/fs.h: the file cannot be unlinked.
const fsImmutableFL = 0x10

// setImmutable sets or clears FS_IMMUTABLE_FL on the file at path.
func setImmutable(t *testing.T, path string, on bool) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	flags, err := unix.IoctlGetInt(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		t.Fatal(err)
	}
	if on {
		flags |= fsImmutableFL
	} else {
		flags &^= fsImmutableFL
	}
	if err := unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, flags); err != nil {
		t.Fatal(err)
	}
}

func TestQuotaProjectIDHeldUntilPurged(t *testing.T) {
	forEachQuotaFS(t, func(t *testing.T, f *kindFixture) {
		del := func(f *kindFixture, r *storage.Record) {
			t.Helper()
			_, err := f.ctrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: r.ID})
			wantCode(t, err, codes.OK)
		}
		a := f.create(t, "pvc-a", 1<<20, nil, rwo)
		// An immutable file keeps the deleted volume in the trash: purges fail.
		pinned := filepath.Join(f.pool.DataPath(a.Hash()), "pinned")
		if err := os.WriteFile(pinned, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		setImmutable(t, pinned, true)
		del(f, a)
		trash := filepath.Join(f.cfg.Path, "trash")
		entries, err := filepath.Glob(filepath.Join(trash, a.Hash()+".*", storage.DataDir, "pinned"))
		if err != nil || len(entries) != 1 {
			t.Fatalf("deleted volume in the trash: %v (err %v), want one", entries, err)
		}
		t.Cleanup(func() {
			if _, err := os.Lstat(entries[0]); err == nil {
				setImmutable(t, entries[0], false)
			}
		})

		b := f.create(t, "pvc-b", 1<<20, nil, rwo)
		if b.ProjectID == a.ProjectID {
			t.Fatalf("pvc-b got project ID %d of the deleted, unpurged pvc-a", b.ProjectID)
		}
		// A restarted engine finds the ID in the trash and keeps it taken too.
		g := f.restartKind(t)
		c := g.create(t, "pvc-c", 1<<20, nil, rwo)
		if c.ProjectID == a.ProjectID || c.ProjectID == b.ProjectID {
			t.Fatalf("after a restart, pvc-c got project ID %d (pvc-a %d, pvc-b %d)", c.ProjectID, a.ProjectID, b.ProjectID)
		}

		// Once the trash is purged, the ID is free again.
		setImmutable(t, entries[0], false)
		del(g, b) // wakes the purger
		deadline := time.Now().Add(10 * time.Second)
		for {
			left, err := os.ReadDir(trash)
			if err != nil {
				t.Fatal(err)
			}
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("trash still holds %d entries", len(left))
			}
			time.Sleep(20 * time.Millisecond)
		}
		// IDs are drawn at random (projects_internal_test.go checks that a freed one
		// is handed out again); here the live volume's ID stays its own.
		d := g.create(t, "pvc-d", 1<<20, nil, rwo)
		if d.ProjectID == c.ProjectID {
			t.Fatalf("pvc-d got project ID %d of the live pvc-c", d.ProjectID)
		}
	})
}
