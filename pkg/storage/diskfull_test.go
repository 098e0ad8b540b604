package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"golang.org/x/sys/unix"
)

// ext4NoReserve is ext4 without the blocks reserved for root: the tests run as root,
// which may write into that reserve, so a filesystem that statfs calls full would not
// refuse them. Without it, what statfs reports free is what root can use.
var ext4NoReserve = testutil.FS{Name: "ext4", Mkfs: []string{"mkfs.ext4", "-q", "-F", "-m", "0"}}

// fullFS is a pool on a small filesystem of its own, overcommitted and with no
// reserve, so that the engine's accounting never refuses a request before the
// filesystem does.
type fullFS struct {
	mnt string
	p   *Pool
}

func newFullFS(t *testing.T, fs testutil.FS, size int64) *fullFS {
	t.Helper()
	mnt := testutil.MountFS(t, fs, size)
	cfg := PoolConfig{Name: "full", Path: filepath.Join(mnt, "pool"), Kind: KindDir, Overcommit: true}
	e, err := New(Config{Pools: []PoolConfig{cfg}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(quietCtx)
	t.Cleanup(func() { cancel(); e.Wait() })
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return &fullFS{mnt: mnt, p: e.DefaultPool()}
}

// fill takes every free byte of the filesystem but leave with a preallocated file,
// and returns what frees them again.
func (f *fullFS) fill(t *testing.T, leave int64) (free func()) {
	t.Helper()
	path := filepath.Join(f.mnt, "filler")
	syncPath(t, f.mnt)
	var st unix.Statfs_t
	if err := unix.Statfs(f.mnt, &st); err != nil {
		t.Fatal(err)
	}
	fh, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	// The file's own extent tree takes a few blocks: give up a block at a time.
	for size := int64(st.Bavail)*st.Bsize - leave; size > 0; size -= st.Bsize {
		err = unix.Fallocate(int(fh.Fd()), 0, 0, size)
		if !errors.Is(err, unix.ENOSPC) {
			break
		}
	}
	if err != nil {
		t.Fatalf("fallocate %s: %v", path, err)
	}
	syncPath(t, f.mnt)
	return func() {
		t.Helper()
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		syncPath(t, f.mnt) // ext4 hands freed blocks back once the journal commits
	}
}

func syncPath(t *testing.T, dir string) {
	t.Helper()
	if err := syncFS(dir); err != nil {
		t.Fatal(err)
	}
}

func (f *fullFS) blockSize(t *testing.T) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(f.mnt, &st); err != nil {
		t.Fatal(err)
	}
	return st.Bsize
}

// allocation is the pool's accounting: committed and reserved bytes, and the
// reserved part alone.
func (f *fullFS) allocation() [2]int64 {
	f.p.mu.Lock()
	defer f.p.mu.Unlock()
	return [2]int64{f.p.allocated, f.p.inflight}
}

// entries lists a directory of the pool.
func (f *fullFS) entries(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(f.p.cfg.Path, dir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

// checkNothingLeft fails unless a refused call left the pool as it found it: no
// entry in tmp/, the trash drained, volumes/ and snapshots/ as before, the same
// allocation.
func (f *fullFS) checkNothingLeft(t *testing.T, what string, volumes, snapshots []string, alloc [2]int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(f.entries(t, trashDir)) > 0 && time.Now().Before(deadline) {
		f.p.kickPurge()
		time.Sleep(10 * time.Millisecond)
	}
	for dir, want := range map[string][]string{tmpDir: nil, trashDir: nil, volumesDir: volumes, snapshotsDir: snapshots} {
		if got := f.entries(t, dir); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s: %s/ holds %v, want %v", what, dir, got, want)
		}
	}
	if got := f.allocation(); got != alloc {
		t.Errorf("%s: allocated, inflight = %v, want %v as before", what, got, alloc)
	}
}

// steps names the steps an out-of-space error can name, as noSpace words them.
var steps = []string{stepBuild, stepCopy, stepRecord}

// sweep runs call on a filesystem filled but for 0, 1, 2... blocks (plus base bytes)
// until it succeeds. Each refusal must be ErrNoSpace and leave nothing behind, and
// the same call must then succeed once the filler is gone. It returns the steps the
// refusals named (a refusal by the engine's accounting names none).
func (f *fullFS) sweep(t *testing.T, base int64, maxBlocks int, call func() error, undo func()) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	bs := f.blockSize(t)
	for n := 0; ; n++ {
		if n > maxBlocks {
			t.Fatalf("still refused with %d blocks free", maxBlocks)
		}
		volumes, snapshots, alloc := f.entries(t, volumesDir), f.entries(t, snapshotsDir), f.allocation()
		free := f.fill(t, base+int64(n)*bs)
		err := call()
		if err == nil {
			free()
			undo()
			t.Logf("%d blocks free: success", n)
			return seen
		}
		t.Logf("%d blocks free: %v", n, err)
		if !errors.Is(err, ErrNoSpace) {
			free()
			t.Fatalf("with %d blocks free: %v, want ErrNoSpace", n, err)
		}
		for _, s := range steps {
			if strings.Contains(err.Error(), "("+s+")") {
				seen[s] = true
			}
		}
		f.checkNothingLeft(t, "after the refusal", volumes, snapshots, alloc)
		free()
		if err := call(); err != nil {
			t.Fatalf("with the filler removed: %v", err)
		}
		undo()
		f.checkNothingLeft(t, "after the success was undone", volumes, snapshots, alloc)
	}
}

func (f *fullFS) create(name string, size int64, src *Source) func() error {
	return func() error {
		_, err := f.p.Create(quietCtx, CreateRequest{Name: name, RequiredBytes: size, AccessType: AccessMount, Source: src})
		return err
	}
}

func (f *fullFS) deleteVolume(t *testing.T, name string) func() {
	return func() {
		t.Helper()
		id := VolumeID(f.p.cfg.Name, name)
		if err := f.p.Delete(quietCtx, id[len(id)-hashLen:]); err != nil {
			t.Fatal(err)
		}
	}
}

func (f *fullFS) deleteSnapshot(t *testing.T, name string) func() {
	return func() {
		t.Helper()
		id := SnapshotID(f.p.cfg.Name, name)
		if err := f.p.DeleteSnapshot(quietCtx, id[len(id)-hashLen:]); err != nil {
			t.Fatal(err)
		}
	}
}

// snapshot makes snapshot name of volume source and waits for its copy: a
// background copy's failure is reported by the next CreateSnapshot call.
func (f *fullFS) snapshot(t *testing.T, name, source string) func() error {
	return func() error {
		id := VolumeID(f.p.cfg.Name, source)
		hash := id[len(id)-hashLen:]
		for {
			s, err := f.p.CreateSnapshot(quietCtx, name, hash)
			if err != nil || s.Ready {
				return err
			}
			sid := s.Hash()
			f.p.snaps.mu.Lock()
			b := f.p.snaps.building[sid]
			f.p.snaps.mu.Unlock()
			if b != nil {
				<-b.done
				if b.err != nil {
					// Until then the snapshot shows as not ready; the copy has let
					// go of everything it took.
					if got, err := f.p.Snapshot(sid); err != nil || got.Ready {
						t.Errorf("failed copy: Snapshot = %+v, %v; want it listed, not ready", got, err)
					}
					if got := f.entries(t, tmpDir); len(got) != 0 {
						t.Errorf("failed copy left tmp/ %v", got)
					}
				}
			}
		}
	}
}

// writeBlob writes n bytes into the data of volume name (a dir volume: its
// capacity is accounted, not enforced, so it may hold more than its size).
func (f *fullFS) writeBlob(t *testing.T, name string, n int64) {
	t.Helper()
	id := VolumeID(f.p.cfg.Name, name)
	path := filepath.Join(f.p.VolumeDir(id[len(id)-hashLen:]), DataDir, "blob")
	if err := os.WriteFile(path, make([]byte, n), 0o644); err != nil {
		t.Fatal(err)
	}
}

func checkSteps(t *testing.T, seen map[string]bool, want ...string) {
	t.Helper()
	for _, s := range want {
		if !seen[s] {
			t.Errorf("no refusal named the %s step (seen: %v)", s, seen)
		}
	}
}

// TestDiskFullCreate: a create that meets a full filesystem while it builds the
// volume or writes its record answers ErrNoSpace, leaves nothing, and succeeds once
// there is room.
func TestDiskFullCreate(t *testing.T) {
	for _, fs := range []testutil.FS{ext4NoReserve, testutil.XFSPlain} {
		t.Run(fs.Name, func(t *testing.T) {
			f := newFullFS(t, fs, 320<<20)
			seen := f.sweep(t, 0, 256, f.create("pvc-1", 1, nil), f.deleteVolume(t, "pvc-1"))
			checkSteps(t, seen, stepBuild)
			if fs.Name == "ext4" {
				checkSteps(t, seen, stepRecord)
			}
		})
	}
}

// TestDiskFullRestore: a clone or a restore whose source holds more data than the
// filesystem has free answers ErrNoSpace at the copy.
func TestDiskFullRestore(t *testing.T) {
	f := newFullFS(t, ext4NoReserve, 128<<20)
	if err := f.create("src", 1<<20, nil)(); err != nil {
		t.Fatal(err)
	}
	f.writeBlob(t, "src", 16<<20)
	if err := f.snapshot(t, "snap", "src")(); err != nil {
		t.Fatal(err)
	}
	for _, src := range []*Source{
		{Kind: SourceVolume, ID: VolumeID("full", "src")},
		{Kind: SourceSnapshot, ID: SnapshotID("full", "snap")},
	} {
		t.Run(src.Kind, func(t *testing.T) {
			// 4 MiB free: room to build, none to copy 16 MiB. The copy is refused
			// at any margin: the sweep's success is the call after the filler goes.
			seen := map[string]bool{}
			for _, leave := range []int64{4 << 20, 8 << 20} {
				volumes, snapshots, alloc := f.entries(t, volumesDir), f.entries(t, snapshotsDir), f.allocation()
				free := f.fill(t, leave)
				err := f.create("copy", 1<<20, src)()
				free()
				if !errors.Is(err, ErrNoSpace) {
					t.Fatalf("with %d bytes free: %v, want ErrNoSpace", leave, err)
				}
				seen[stepCopy] = seen[stepCopy] || strings.Contains(err.Error(), "("+stepCopy+")")
				f.checkNothingLeft(t, "after the refusal", volumes, snapshots, alloc)
				if err := f.create("copy", 1<<20, src)(); err != nil {
					t.Fatalf("with the filler removed: %v", err)
				}
				f.deleteVolume(t, "copy")()
				f.checkNothingLeft(t, "after the copy was deleted", volumes, snapshots, alloc)
			}
			checkSteps(t, seen, stepCopy)
		})
	}
}

// TestDiskFullSnapshot: a snapshot copy that meets a full filesystem ends failed,
// is reported as ErrNoSpace, leaves nothing, and succeeds once there is room. On
// ext4 the copy runs in the background; on XFS a reflink answers at once.
func TestDiskFullSnapshot(t *testing.T) {
	t.Run("ext4 background copy", func(t *testing.T) {
		f := newFullFS(t, ext4NoReserve, 128<<20)
		if err := f.create("src", 1<<20, nil)(); err != nil {
			t.Fatal(err)
		}
		f.writeBlob(t, "src", 16<<20)
		seen := map[string]bool{}
		for _, leave := range []int64{2 << 20, 4 << 20} {
			volumes, snapshots, alloc := f.entries(t, volumesDir), f.entries(t, snapshotsDir), f.allocation()
			free := f.fill(t, leave)
			err := f.snapshot(t, "snap", "src")()
			free()
			if !errors.Is(err, ErrNoSpace) {
				t.Fatalf("with %d bytes free: %v, want ErrNoSpace", leave, err)
			}
			seen[stepCopy] = seen[stepCopy] || strings.Contains(err.Error(), "("+stepCopy+")")
			f.checkNothingLeft(t, "after the refusal", volumes, snapshots, alloc)
			if _, err := f.p.Snapshot(SnapshotID("full", "snap")[len("s1-full-"):]); !errors.Is(err, ErrNotFound) {
				t.Errorf("after the refusal was reported: Snapshot = %v, want ErrNotFound", err)
			}
			if err := f.snapshot(t, "snap", "src")(); err != nil {
				t.Fatalf("with the filler removed: %v", err)
			}
			f.deleteSnapshot(t, "snap")()
			f.checkNothingLeft(t, "after the snapshot was deleted", volumes, snapshots, alloc)
		}
		checkSteps(t, seen, stepCopy)
	})
	t.Run("xfs reflink", func(t *testing.T) {
		f := newFullFS(t, testutil.XFSPlain, 320<<20)
		if !f.p.copyIsFast() {
			t.Skip("no reflinks on this XFS")
		}
		if err := f.create("src", 1, nil)(); err != nil {
			t.Fatal(err)
		}
		f.writeBlob(t, "src", 1<<20)
		f.sweep(t, 0, 256, f.snapshot(t, "snap", "src"), f.deleteSnapshot(t, "snap"))
	})
}
