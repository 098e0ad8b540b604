package storage_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"golang.org/x/sys/unix"
)

// backupNodes are two "nodes": engines with node-local pools of their own and one
// shared pool "sh" between them (a bind mount standing for the distributed
// filesystem every node mounts).
type backupNodes struct {
	a, b *storage.Engine
	sh   string
}

// newBackupNodes starts the two engines; local makes each node's local pool
// config under its own directory.
func newBackupNodes(t *testing.T, local func(dir string) storage.PoolConfig) backupNodes {
	t.Helper()
	base, sh := testutil.SharedDir(t)
	start := func(node string) *storage.Engine {
		dir := filepath.Join(base, node)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		return testengine.Start(t, storage.Config{Pools: []storage.PoolConfig{
			local(dir), {Name: "sh", Path: sh, Kind: storage.KindShared},
		}})
	}
	return backupNodes{a: start("a"), b: start("b"), sh: sh}
}

func pool(t testing.TB, e *storage.Engine, name string) *storage.Pool {
	t.Helper()
	p, err := e.Pool(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// backup takes backup name of volume r on e and waits until it is ready.
func backup(t testing.TB, e *storage.Engine, name string, r *storage.Record) *storage.Snapshot {
	t.Helper()
	src, hash, err := e.Resolve(r.ID)
	if err != nil {
		t.Fatal(err)
	}
	s, err := pool(t, e, "sh").CreateBackup(context.Background(), name, src, hash)
	if err != nil {
		t.Fatalf("backup %s: %v", name, err)
	}
	deadline := time.Now().Add(time.Minute)
	for !s.Ready {
		if time.Now().After(deadline) {
			t.Fatalf("backup %s not ready after a minute", name)
		}
		time.Sleep(50 * time.Millisecond)
		if s, err = pool(t, e, "sh").CreateBackup(context.Background(), name, src, hash); err != nil {
			t.Fatalf("backup %s: %v", name, err)
		}
	}
	if s.Backup == nil || s.SourceVolumeID != r.ID {
		t.Fatalf("backup %s: %+v", name, s)
	}
	return s
}

// restore creates volume name in pool of e from snapshot id, retrying while it is
// copied in the background.
func restore(t *testing.T, e *storage.Engine, poolName, name, id string, req storage.CreateRequest) (*storage.Record, error) {
	t.Helper()
	req.Name, req.Source = name, &storage.Source{Kind: storage.SourceSnapshot, ID: id}
	req.Parameters = map[string]string{"pool": poolName}
	deadline := time.Now().Add(time.Minute)
	for {
		r, err := pool(t, e, poolName).Create(context.Background(), req)
		if !errors.Is(err, storage.ErrInProgress) || time.Now().After(deadline) {
			return r, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A directory volume backed up to the shared pool from node a is restored on node
// b whole (every kind of entry, holes, links, xattrs, owners); the second backup
// links what did not change from the first, and stays whole once the first is
// deleted.
func TestBackupOfADirectoryVolumeRestoredOnAnotherNode(t *testing.T) {
	for _, fs := range []struct {
		name  string
		local func(t *testing.T, dir string) string
	}{
		{"reflink", func(t *testing.T, _ string) string { return testutil.MountFS(t, testutil.XFSPlain, 512<<20) }},
		{"no-reflink", func(_ *testing.T, dir string) string { return dir }},
	} {
		t.Run(fs.name, func(t *testing.T) {
			n := newBackupNodes(t, func(dir string) storage.PoolConfig {
				return storage.PoolConfig{Name: "local", Path: filepath.Join(fs.local(t, dir), "pool"), Kind: storage.KindDir}
			})
			req := storage.CreateRequest{RequiredBytes: 100 << 20, AccessType: storage.AccessMount}
			req.Name, req.Parameters = "pvc-src", map[string]string{"pool": "local"}
			r, err := pool(t, n.a, "local").Create(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			data := filepath.Join(pool(t, n.a, "local").VolumeDir(r.Hash()), "data")
			if err := os.Remove(data); err != nil {
				t.Fatal(err)
			}
			fx := testutil.BuildTreeFixture(t, data, filepath.Join(t.TempDir(), "outside"))
			first := backup(t, n.a, "snap-1", r)
			if first.Backup.Format != storage.BackupTree || first.Backup.Base != "" || first.Backup.LinkedBytes != 0 {
				t.Errorf("first backup: %+v, want a full tree", *first.Backup)
			}

			got, err := restore(t, n.b, "local", "pvc-restored", first.ID, req)
			if err != nil {
				t.Fatalf("restore on node b: %v", err)
			}
			restored := filepath.Join(pool(t, n.b, "local").VolumeDir(got.Hash()), "data")
			testutil.CheckTreeCopy(t, data, restored, fx)
			testutil.CheckTreeData(t, restored, fx)

			// A change, then the second backup: incremental against the first.
			writeFile(t, filepath.Join(data, "changed"), "after the first backup")
			second := backup(t, n.a, "snap-2", r)
			if second.Backup.Base != first.ID || second.Backup.LinkedBytes < testutil.TreeRandomSize ||
				second.Backup.WrittenBytes >= first.Backup.WrittenBytes/10 {
				t.Errorf("second backup: %+v, want it based on %s, linking the unchanged files (first wrote %d bytes)",
					*second.Backup, first.ID, first.Backup.WrittenBytes)
			}
			one, two := filepath.Join(n.sh, "snapshots", first.Hash(), "data"), filepath.Join(n.sh, "snapshots", second.Hash(), "data")
			if !sameInode(t, filepath.Join(one, "random.bin"), filepath.Join(two, "random.bin")) {
				t.Error("the unchanged random.bin is not linked between the two backups")
			}
			if err := pool(t, n.a, "sh").DeleteSnapshot(context.Background(), first.Hash()); err != nil {
				t.Fatal(err)
			}
			got, err = restore(t, n.b, "local", "pvc-restored-2", second.ID, req)
			if err != nil {
				t.Fatalf("restore of the second backup once the first is deleted: %v", err)
			}
			restored = filepath.Join(pool(t, n.b, "local").VolumeDir(got.Hash()), "data")
			testutil.CheckTreeData(t, restored, fx)
			assertContent(t, filepath.Join(restored, "changed"), "after the first backup")
		})
	}
}

// checkBackup compares a backup's base and byte counts with want's.
func checkBackup(t *testing.T, s *storage.Snapshot, base string, want storage.BackupInfo) {
	t.Helper()
	got := *s.Backup
	if got.Base != base || got.LinkedBytes != want.LinkedBytes || got.WrittenBytes != want.WrittenBytes || got.UnreadBytes != want.UnreadBytes {
		t.Errorf("backup %s: %+v; want based on %s, %d bytes linked (%d unread), %d written",
			s.Name, got, base, want.LinkedBytes, want.UnreadBytes, want.WrittenBytes)
	}
}

func sameInode(t *testing.T, a, b string) bool {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Lstat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(b, &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// An image volume's backup is its chunks: zeros and holes stored as nothing,
// unchanged chunks linked from the previous backup, and restored on another node
// byte for byte and sparse; a damaged chunk fails the restore, naming it.
func TestBackupOfAnImageVolumeRestoredOnAnotherNode(t *testing.T) {
	t.Run("reflink", func(t *testing.T) {
		testImageBackup(t, true, func(t *testing.T, _ string) string { return testutil.MountFS(t, testutil.XFSPlain, 512<<20) })
	})
	t.Run("no-reflink", func(t *testing.T) {
		testImageBackup(t, false, func(_ *testing.T, dir string) string { return dir })
	})
}

// testImageBackup: with reflinks the second backup reads only the chunks written
// since the first (their extents tell), without them it reads the image whole;
// either way it writes only those.
func testImageBackup(t *testing.T, reflink bool, local func(t *testing.T, dir string) string) {
	n := newBackupNodes(t, func(dir string) storage.PoolConfig {
		return storage.PoolConfig{Name: "img", Path: filepath.Join(local(t, dir), "img"), Kind: storage.KindImage}
	})
	const size = 64 << 20
	req := storage.CreateRequest{RequiredBytes: size, AccessType: storage.AccessBlock}
	req.Name, req.Parameters = "pvc-img", map[string]string{"pool": "img"}
	r, err := pool(t, n.a, "img").Create(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	image := pool(t, n.a, "img").ImagePath(r.Hash())
	writeAt := func(off int64, n int) {
		t.Helper()
		f, err := os.OpenFile(image, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, n)
		_, _ = rand.Read(b)
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	for _, off := range []int64{0, 8 << 20, 8<<20 + 4<<20, 40 << 20} {
		writeAt(off, 4<<20)
	}
	first := backup(t, n.a, "snap-1", r)
	if first.Backup.Format != storage.BackupChunks || first.Backup.WrittenBytes != 16<<20 {
		t.Errorf("first backup: %+v, want 16 MiB of chunks written", *first.Backup)
	}
	// Chunk 2 changes in two blocks, chunk 15 (zeros) gets one.
	writeAt(8<<20+100, 4096)
	writeAt(60<<20, 4096)
	second := backup(t, n.a, "snap-2", r)
	const mib, rec = int64(1 << 20), int64(4 + 4096) // a patch record: index and block
	// Without reflinks the image is read whole, and the changed chunks written
	// whole; with them, only chunk 2's two blocks are read, and written as a patch
	// over a link of the first backup's chunk.
	want := storage.BackupInfo{LinkedBytes: 12 * mib, WrittenBytes: 8 * mib}
	if reflink {
		want = storage.BackupInfo{LinkedBytes: 16 * mib, WrittenBytes: 2*rec + 4*mib, UnreadBytes: 16*mib - 8192}
	}
	checkBackup(t, second, first.ID, want)
	sameImage := func(name, id string) {
		t.Helper()
		got, err := restore(t, n.b, "img", name, id, req)
		if err != nil {
			t.Fatalf("restore of %s on node b: %v", id, err)
		}
		want, err := os.ReadFile(image)
		if err != nil {
			t.Fatal(err)
		}
		restored := pool(t, n.b, "img").ImagePath(got.Hash())
		have, err := os.ReadFile(restored)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(have, want) {
			t.Errorf("the image restored from %s differs from the source", id)
		}
		var st unix.Stat_t
		if err := unix.Stat(restored, &st); err != nil {
			t.Fatal(err)
		}
		if st.Blocks*512 > 24<<20 {
			t.Errorf("restored image holds %d bytes, want about 20 MiB (it must stay sparse)", st.Blocks*512)
		}
	}
	sameImage("pvc-img-restored", second.ID)
	// A third backup: based on the second (and, with reflinks, on its copy).
	// Chunk 10 changes in one block, patched chunk 2 in one more (the patch
	// merges them), chunk 3 in 512 (too many: written whole).
	writeAt(40<<20, 4096)
	writeAt(8<<20+64<<10, 4096)
	writeAt(12<<20, 2<<20)
	third := backup(t, n.a, "snap-3", r)
	want = storage.BackupInfo{LinkedBytes: 8 * mib, WrittenBytes: 12 * mib}
	if reflink {
		want = storage.BackupInfo{LinkedBytes: 16 * mib, WrittenBytes: 4*rec + 4*mib, UnreadBytes: 16*mib - 8192}
	}
	checkBackup(t, third, second.ID, want)
	sameImage("pvc-img-restored-3", third.ID)

	// A chunk damaged on the shared filesystem: the restore says which.
	chunk := filepath.Join(n.sh, "snapshots", second.Hash(), "chunks", "0000000f")
	if err := os.WriteFile(chunk, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = restore(t, n.b, "img", "pvc-img-damaged", second.ID, req)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("chunk 15")) {
		t.Errorf("restore from a damaged backup: %v, want an error naming chunk 15", err)
	}
}

// What a backup refuses: a pool that is not shared as its target, the shared pool's
// own volumes, a name taken by a backup of another volume; and a restore of a tree
// into an image pool.
func TestBackupRefusals(t *testing.T) {
	n := newBackupNodes(t, func(dir string) storage.PoolConfig {
		return storage.PoolConfig{Name: "local", Path: filepath.Join(dir, "local"), Kind: storage.KindDir}
	})
	local, sh := pool(t, n.a, "local"), pool(t, n.a, "sh")
	mk := func(p *storage.Pool, name string) *storage.Record {
		t.Helper()
		r, err := p.Create(context.Background(), storage.CreateRequest{Name: name, RequiredBytes: 1 << 20,
			AccessType: storage.AccessMount, Parameters: map[string]string{"pool": p.Name()}})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	v1, v2, shv := mk(local, "pvc-1"), mk(local, "pvc-2"), mk(sh, "pvc-sh")
	_, err := local.CreateBackup(context.Background(), "b", local, v1.Hash())
	checkErr(t, err, storage.ErrInvalid)
	_, err = sh.CreateBackup(context.Background(), "b", sh, shv.Hash())
	checkErr(t, err, storage.ErrInvalid)
	s := backup(t, n.a, "b", v1)
	_, err = sh.CreateBackup(context.Background(), "b", local, v2.Hash())
	checkErr(t, err, storage.ErrExists)
	// The same request again is the same backup.
	again, err := sh.CreateBackup(context.Background(), "b", local, v1.Hash())
	if err != nil || again.ID != s.ID || !again.Ready {
		t.Errorf("repeated backup: %+v, %v", again, err)
	}

	img := testengine.Start(t, storage.Config{Pools: []storage.PoolConfig{
		{Name: "img", Path: filepath.Join(t.TempDir(), "img"), Kind: storage.KindImage},
		{Name: "sh", Path: n.sh, Kind: storage.KindShared},
	}})
	_, err = restore(t, img, "img", "pvc-x", s.ID, storage.CreateRequest{RequiredBytes: 1 << 20, AccessType: storage.AccessMount, FSType: "ext4"})
	checkErr(t, err, storage.ErrInvalid)
}

// A backup interrupted by the plugin's stop (its copies cancelled) or its death
// (their tmp/ entries left behind, planted here) leaves nothing once the engine
// starts again, and the same request then makes the backup whole.
func TestBackupInterruptedByARestart(t *testing.T) {
	base, sh := testutil.SharedDir(t)
	pools := []storage.PoolConfig{
		{Name: "local", Path: filepath.Join(base, "local"), Kind: storage.KindDir},
		{Name: "sh", Path: sh, Kind: storage.KindShared},
	}
	start := func() (*storage.Engine, func()) {
		t.Helper()
		e, err := storage.New(storage.Config{Pools: pools})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		if err := e.Start(ctx); err != nil {
			t.Fatal(err)
		}
		stop := func() { cancel(); e.Wait() }
		t.Cleanup(stop)
		return e, stop
	}
	e, stop := start()
	r, err := pool(t, e, "local").Create(context.Background(), storage.CreateRequest{Name: "pvc", RequiredBytes: 1 << 30,
		AccessType: storage.AccessMount, Parameters: map[string]string{"pool": "local"}})
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(pool(t, e, "local").VolumeDir(r.Hash()), "data")
	big := make([]byte, 256<<20)
	_, _ = rand.Read(big)
	if err := os.WriteFile(filepath.Join(data, "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	s, err := pool(t, e, "sh").CreateBackup(ctx, "b", pool(t, e, "local"), r.Hash())
	if err != nil || s.Ready {
		t.Fatalf("backup of 256 MiB without reflinks: %+v, %v; want it in progress", s, err)
	}
	stop()
	// A plugin killed instead leaves its entries: a point-in-time copy in the
	// volume's pool, a half-written backup in the shared one.
	for _, d := range []string{
		filepath.Join(base, "local", "tmp", "p"+r.Hash()+".0123456789abcdef", "data"),
		filepath.Join(sh, "tmp", "s"+s.Hash()+".0123456789abcdef", "data"),
	} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(d, "partial"), "half")
	}

	e, _ = start()
	again := backup(t, e, "b", r)
	if again.ID != s.ID {
		t.Errorf("the retried backup is %s, want %s", again.ID, s.ID)
	}
	got, err := os.ReadFile(filepath.Join(sh, "snapshots", s.Hash(), "data", "big"))
	if err != nil || !bytes.Equal(got, big) {
		t.Errorf("the backup's copy of big differs (%v)", err)
	}
	for _, d := range []string{filepath.Join(base, "local", "tmp"), filepath.Join(sh, "tmp")} {
		if left, _ := os.ReadDir(d); len(left) != 0 {
			t.Errorf("%s holds %d entries after the backup, want none", d, len(left))
		}
	}
}
