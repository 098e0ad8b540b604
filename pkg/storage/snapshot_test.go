package storage_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"golang.org/x/sys/unix"
)

// snapTimeout bounds every wait for a snapshot, a restore or a clone: a copy that
// hangs (on a fifo, on a frozen filesystem) fails the test instead of the run.
const snapTimeout = 2 * time.Minute

// loopFSes are the filesystems the snapshot tests run on, each made on a loop file:
// XFS with reflink (snapshots are FICLONE copies, ready at once) and ext4 (a copy
// in the background).
var loopFSes = []struct {
	name string
	fs   testutil.FS
}{
	{"xfs-reflink", testutil.XFSPlain},
	{"ext4", testutil.Ext4Plain},
}

// loopPool is a pool of kind on a fresh 4 GiB filesystem fs made on a loop file.
func loopPool(t *testing.T, fs testutil.FS, kind string) storage.PoolConfig {
	t.Helper()
	mnt := testutil.MountFS(t, fs, 4<<30)
	return storage.PoolConfig{Name: "default", Path: filepath.Join(mnt, "pool"), Kind: kind}
}

// tmpfsPool is a dir pool on a fresh 256 MiB tmpfs: the accounting, not free space
// that other programs change, bounds what its Capacity reports.
func tmpfsPool(t *testing.T) storage.PoolConfig {
	t.Helper()
	testutil.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "fs")
	testutil.MountTmpfs(t, dir, 256*mib)
	return dirPool(dir, "default")
}

// within runs f and returns its error, or fails the test when f takes longer than d.
func within(t *testing.T, d time.Duration, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("%s did not finish within %v", what, d)
		return nil
	}
}

// snapshotReady makes snapshot name of the volume with hash src and repeats the
// call, as the snapshot sidecar does, until it is ready. Every answer must name the
// same snapshot.
func snapshotReady(t *testing.T, p *storage.Pool, name, src string) *storage.Snapshot {
	t.Helper()
	var s *storage.Snapshot
	err := within(t, snapTimeout, "snapshot "+name, func() error {
		for {
			got, err := p.CreateSnapshot(context.Background(), name, src)
			if err != nil {
				return err
			}
			if s != nil && got.ID != s.ID {
				return errors.New("a repeated CreateSnapshot named another snapshot: " + got.ID + " then " + s.ID)
			}
			s = got
			if s.Ready {
				return nil
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	if err != nil {
		t.Fatalf("CreateSnapshot %s: %v", name, err)
	}
	return s
}

// mustRestore creates volume name of size bytes from src (a snapshot or volume ID).
func mustRestore(t *testing.T, p *storage.Pool, name, kind, src string, size int64) *storage.Record {
	t.Helper()
	var r *storage.Record
	err := within(t, snapTimeout, "create "+name+" from "+src, func() (err error) {
		r, err = p.Create(context.Background(), storage.CreateRequest{
			Name: name, RequiredBytes: size, AccessType: storage.AccessMount,
			Source: &storage.Source{Kind: kind, ID: src},
		})
		return err
	})
	if err != nil {
		t.Fatalf("create %s from %s %s: %v", name, kind, src, err)
	}
	return r
}

// snapshotData is the copy of the volume's data a snapshot holds (see snapshot.go).
func snapshotData(p *storage.Pool, s *storage.Snapshot) string {
	return filepath.Join(p.Config().Path, "snapshots", s.Hash(), storage.DataDir)
}

// hostile is what TestSnapshotHostileContents plants in a volume and must find,
// unchanged and never followed, in every copy.
type hostile struct {
	outside      string // a host file outside the pool
	outsideStat  unix.Stat_t
	sparse       []byte // the data of the sparse file, at sparseAt
	xattrs       map[string]string
	setuidSource string
}

const (
	sparseSize = 10 << 30
	sparseAt   = 5 << 30
)

// plantHostile fills the volume data directory dir with what a hostile pod could
// leave there.
func plantHostile(t *testing.T, dir, outsideDir string) *hostile {
	t.Helper()
	h := &hostile{outside: filepath.Join(outsideDir, "host-secret"), setuidSource: "#!/bin/sh\nid -u\n"}
	writeFile(t, h.outside, "host data")
	h.outsideStat = lstatT(t, h.outside)
	for _, l := range []struct{ target, name string }{
		{h.outside, "escape"},
		{outsideDir, "escape-dir"},
		{"../../../../..", "up"},
		{"loop2", "loop1"},
		{"loop1", "loop2"},
		{"self", "self"},
	} {
		if err := os.Symlink(l.target, filepath.Join(dir, l.name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	suid := filepath.Join(dir, "suid")
	writeFile(t, suid, h.setuidSource)
	if err := os.Chown(suid, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(suid, 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	h.sparse = make([]byte, 1<<20)
	if _, err := rand.Read(h.sparse); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "sparse.img"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(h.sparse, sparseAt); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(sparseSize); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "attrs", "file"), "with xattrs")
	h.xattrs = map[string]string{"user.color": "blue", "user.empty": "", "user.big": strings.Repeat("v", 2000)}
	for _, p := range []string{filepath.Join(dir, "attrs", "file"), filepath.Join(dir, "attrs")} {
		for k, v := range h.xattrs {
			if err := unix.Setxattr(p, k, []byte(v), 0); err != nil {
				t.Fatalf("setxattr %s on %s: %v", k, p, err)
			}
		}
	}
	return h
}

func lstatT(t *testing.T, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// check asserts that dir, a copy of a hostile volume, holds the same entries, that
// none was followed or expanded, and that the host file is untouched.
func (h *hostile) check(t *testing.T, dir string) {
	t.Helper()
	for _, l := range []struct{ name, target string }{
		{"escape", h.outside},
		{"escape-dir", filepath.Dir(h.outside)},
		{"up", "../../../../.."},
		{"loop1", "loop2"},
		{"loop2", "loop1"},
		{"self", "self"},
	} {
		got, err := os.Readlink(filepath.Join(dir, l.name))
		if err != nil || got != l.target {
			t.Errorf("%s: readlink %q (%v), want a symlink to %q", l.name, got, err, l.target)
		}
	}
	if st := lstatT(t, filepath.Join(dir, "fifo")); st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("fifo: mode %#o, want a fifo", st.Mode)
	}
	if st := lstatT(t, filepath.Join(dir, "null")); st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(1, 3) {
		t.Errorf("null: mode %#o rdev %#x, want the character device 1,3", st.Mode, st.Rdev)
	}
	if st := lstatT(t, filepath.Join(dir, "suid")); st.Mode != unix.S_IFREG|unix.S_ISUID|0o755 || st.Uid != 0 {
		t.Errorf("suid: mode %#o uid %d, want a setuid root file", st.Mode, st.Uid)
	}
	assertContent(t, filepath.Join(dir, "suid"), h.setuidSource)
	sparse := filepath.Join(dir, "sparse.img")
	st := lstatT(t, sparse)
	if st.Size != sparseSize || st.Blocks*512 > 16<<20 {
		t.Errorf("sparse.img: size %d with %d bytes allocated, want %d with about 1 MiB (holes kept)", st.Size, st.Blocks*512, int64(sparseSize))
	}
	f, err := os.Open(sparse)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(h.sparse))
	if _, err := f.ReadAt(got, sparseAt); err != nil || !bytes.Equal(got, h.sparse) {
		t.Errorf("sparse.img: data at %d differs (err %v)", sparseAt, err)
	}
	f.Close()
	for _, p := range []string{filepath.Join(dir, "attrs", "file"), filepath.Join(dir, "attrs")} {
		for k, want := range h.xattrs {
			buf := make([]byte, 4096)
			n, err := unix.Getxattr(p, k, buf)
			if err != nil || string(buf[:n]) != want {
				t.Errorf("%s: xattr %s = %q (%v), want %q", p, k, buf[:max(n, 0)], err, want)
			}
		}
	}
	assertContent(t, h.outside, "host data")
	if now := lstatT(t, h.outside); now.Mtim != h.outsideStat.Mtim || now.Ctim != h.outsideStat.Ctim || now.Ino != h.outsideStat.Ino {
		t.Errorf("the host file the volume links to was changed: %+v, was %+v", now, h.outsideStat)
	}
	entries, err := os.ReadDir(filepath.Dir(h.outside))
	if err != nil || len(entries) != 1 {
		t.Errorf("the host directory beside the pool holds %d entries (err %v), want only the host file", len(entries), err)
	}
}

// TestSnapshotHostileContents snapshots, restores and clones a dir volume holding
// symlinks out of it and in loops, a fifo, a device node, a setuid file, a 10 GiB
// sparse file and xattrs. Nothing is followed, nothing hangs, holes stay holes.
func TestSnapshotHostileContents(t *testing.T) {
	for _, tc := range loopFSes {
		t.Run(tc.name, func(t *testing.T) {
			p := startEngine(t, loopPool(t, tc.fs, storage.KindDir)).DefaultPool()
			src := mustCreate(t, p, "hostile", 64*mib)
			h := plantHostile(t, p.DataPath(src.Hash()), t.TempDir())

			s := snapshotReady(t, p, "snap", src.Hash())
			h.check(t, snapshotData(p, s))
			restored := mustRestore(t, p, "restored", storage.SourceSnapshot, s.ID, 64*mib)
			h.check(t, p.DataPath(restored.Hash()))
			clone := mustRestore(t, p, "clone", storage.SourceVolume, src.ID, 64*mib)
			h.check(t, p.DataPath(clone.Hash()))
		})
	}
}

// TestSnapshotRestartRollsBack plants what a driver killed in the middle of a
// background snapshot copy leaves in tmp/ (with and without the record written),
// then starts a new engine on the pool: the half-built snapshot is gone, never
// listed, and the same snapshot can be made again.
func TestSnapshotRestartRollsBack(t *testing.T) {
	for _, withRecord := range []bool{false, true} {
		name := "data only"
		if withRecord {
			name = "record written"
		}
		t.Run(name, func(t *testing.T) {
			pc := tmpfsPool(t)
			e, stop := startEngineStop(t, pc)
			p := e.DefaultPool()
			src := mustCreate(t, p, "src", 64*mib)
			writeFile(t, filepath.Join(p.DataPath(src.Hash()), "a"), "complete")
			writeFile(t, filepath.Join(p.DataPath(src.Hash()), "b"), "also complete")
			before := available(t, p)
			stop()

			id := storage.SnapshotID("default", "snap")
			hash := id[len(id)-32:]
			half := filepath.Join(pc.Path, "tmp", "s"+hash+".0123456789abcdef")
			writeFile(t, filepath.Join(half, "data", "a"), "complete")
			writeFile(t, filepath.Join(half, "data", "b"), "also")
			if withRecord {
				writeFile(t, filepath.Join(half, "record.json"),
					`{"version":1,"id":"`+id+`","name":"snap","pool":"default","sourceVolumeID":"`+src.ID+`","sizeBytes":67108864,"accessType":"mount","createdAt":"2026-01-01T00:00:00Z"}`)
			}

			p = startEngine(t, pc).DefaultPool()
			if entries, err := os.ReadDir(filepath.Join(pc.Path, "tmp")); err != nil || len(entries) != 0 {
				t.Fatalf("tmp/ holds %d entries after start (err %v), want none", len(entries), err)
			}
			waitEmpty(t, filepath.Join(pc.Path, "trash"))
			if _, err := p.Snapshot(hash); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("Snapshot of the half-built one: %v, want ErrNotFound", err)
			}
			if got := p.Snapshots(); len(got) != 0 {
				t.Fatalf("Snapshots lists %d snapshots, want none", len(got))
			}
			if got := available(t, p); got != before {
				t.Fatalf("available %d after restart, was %d: the half-built snapshot is accounted", got, before)
			}
			s := snapshotReady(t, p, "snap", src.Hash())
			if s.ID != id {
				t.Fatalf("snapshot ID %s, want %s", s.ID, id)
			}
			restored := mustRestore(t, p, "restored", storage.SourceSnapshot, s.ID, 64*mib)
			assertContent(t, filepath.Join(p.DataPath(restored.Hash()), "b"), "also complete")
		})
	}
}

// TestDeleteSnapshotWhileCopying deletes a snapshot whose background copy runs: the
// copy stops, nothing of it is left, its capacity comes back and its source may go.
func TestDeleteSnapshotWhileCopying(t *testing.T) {
	pc := loopPool(t, testutil.Ext4Plain, storage.KindDir)
	p := startEngine(t, pc).DefaultPool()
	// 1.5 GiB of the 4 GiB: the accounting, not the free space, bounds what is
	// available, before and after the snapshot's reservation.
	src := mustCreate(t, p, "src", 1536*mib)
	writeRandomFile(t, filepath.Join(p.DataPath(src.Hash()), "blob"), 256*mib)
	before := available(t, p)

	s, err := p.CreateSnapshot(context.Background(), "snap", src.Hash())
	if err != nil {
		t.Fatal(err)
	}
	if s.Ready {
		t.Fatal("a copy of 256 MiB without reflinks was ready at once")
	}
	if err := within(t, snapTimeout, "DeleteSnapshot", func() error { return p.DeleteSnapshot(context.Background(), s.Hash()) }); err != nil {
		t.Fatalf("DeleteSnapshot while copying: %v", err)
	}
	if _, err := p.Snapshot(s.Hash()); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Snapshot after delete: %v, want ErrNotFound", err)
	}
	if p.Copying(src.ID) {
		t.Fatal("the source is still being copied after DeleteSnapshot")
	}
	if entries, _ := os.ReadDir(filepath.Join(pc.Path, "tmp")); len(entries) != 0 {
		t.Fatalf("tmp/ holds %v after DeleteSnapshot", entries)
	}
	waitEmpty(t, filepath.Join(pc.Path, "trash"))
	if got := available(t, p); got != before {
		t.Fatalf("available %d after DeleteSnapshot, was %d before the snapshot", got, before)
	}
	snapshotReady(t, p, "snap", src.Hash())
	mustDelete(t, p, src.Hash())
}

// TestSnapshotCapacityAfterRestart: snapshots count against the pool's capacity, also
// once reloaded by a new engine, and give it back when deleted.
func TestSnapshotCapacityAfterRestart(t *testing.T) {
	pc := tmpfsPool(t)
	e, stop := startEngineStop(t, pc)
	p := e.DefaultPool()
	src := mustCreate(t, p, "src", 64*mib)
	writeFile(t, filepath.Join(p.DataPath(src.Hash()), "f"), "data")
	noSnap := available(t, p)
	s := snapshotReady(t, p, "snap", src.Hash())
	if got := available(t, p); got != noSnap-64*mib {
		t.Fatalf("available %d with a snapshot, want %d (%d less its source's 64 MiB)", got, noSnap-64*mib, noSnap)
	}
	stop()
	p = startEngine(t, pc).DefaultPool()
	if got := available(t, p); got != noSnap-64*mib {
		t.Fatalf("available %d after restart, want %d", got, noSnap-64*mib)
	}
	if err := p.DeleteSnapshot(context.Background(), s.Hash()); err != nil {
		t.Fatal(err)
	}
	if got := available(t, p); got != noSnap {
		t.Fatalf("available %d after DeleteSnapshot, want %d", got, noSnap)
	}
}

// TestSnapshotImageNeverFreezesWhatIsNotItsFilesystem snapshots an image volume
// whose staging record exists while nothing is mounted at its staging path (a stage
// that failed before the mount, or a node rebooted since): the filesystem holding
// that path is the host's, not the volume's, and must not be frozen. The path lies
// on the pool's own test filesystem, so a wrong freeze blocks only the test (which
// thaws it and fails), never the machine.
func TestSnapshotImageNeverFreezesWhatIsNotItsFilesystem(t *testing.T) {
	pc := loopPool(t, testutil.XFSPlain, storage.KindImage)
	p := startEngine(t, pc).DefaultPool()
	r, err := p.Create(context.Background(), storage.CreateRequest{
		Name: "img", RequiredBytes: 64 * mib, AccessType: storage.AccessMount, FSType: "ext4",
	})
	if err != nil {
		t.Fatal(err)
	}
	staging := filepath.Join(filepath.Dir(pc.Path), "kubelet", "globalmount")
	if err := os.MkdirAll(staging, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := p.MarkStaged(r.Hash(), staging); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := p.CreateSnapshot(context.Background(), "snap", r.Hash())
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("CreateSnapshot: %v", err)
		}
	case <-time.After(30 * time.Second):
		testutil.ThawFS(filepath.Dir(pc.Path))
		<-done
		t.Fatal("CreateSnapshot hung: it froze the filesystem holding the unmounted staging path")
	}
}

// writeRandomFile writes size random bytes to path and syncs them.
func writeRandomFile(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	for n := int64(0); n < size; n += int64(len(buf)) {
		if _, err := rand.Read(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(buf[:min(int64(len(buf)), size-n)]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// FuzzParseSnapshotID: ParseSnapshotID accepts exactly the s1- form of a valid volume
// ID, rejects with ErrInvalid, and what it accepts passes the name check that
// ResolveSnapshot and DeleteSnapshot apply first.
func FuzzParseSnapshotID(f *testing.F) {
	for _, s := range []string{
		"", "s1-", storage.SnapshotID("default", "snap-1"), storage.VolumeID("default", "snap-1"),
		"s1--0123456789abcdef0123456789abcdef", "s2-default-0123456789abcdef0123456789abcdef",
		"s1-default-0123456789ABCDEF0123456789abcdef", "s1-a\x00-0123456789abcdef0123456789abcdef",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		got, err := storage.ParseSnapshotID(id)
		if err != nil {
			if !errors.Is(err, storage.ErrInvalid) {
				t.Fatalf("ParseSnapshotID(%q): %v does not wrap ErrInvalid", id, err)
			}
			return
		}
		if "s1-"+got.Pool+"-"+got.Hash != id {
			t.Fatalf("ParseSnapshotID(%q) = %+v does not round-trip", id, got)
		}
		if vol, err := storage.ParseVolumeID("b1-" + id[len("s1-"):]); err != nil || vol != got {
			t.Fatalf("ParseSnapshotID(%q) = %+v, but the volume form parses to %+v, %v", id, got, vol, err)
		}
		if err := storage.ValidateName(id); err != nil {
			t.Fatalf("ParseSnapshotID(%q) accepts an ID ValidateName refuses: %v", id, err)
		}
	})
}
