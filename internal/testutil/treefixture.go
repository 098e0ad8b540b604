package testutil

import (
	"bytes"
	"crypto/rand"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The sizes and owners of a TreeFixture.
const (
	TreeRandomSize = 64 << 20 // random.bin
	TreeSparseSize = 10 << 30 // apparent size of sparse.img
	TreeSparseAt   = 5 << 30  // where its only data lies
	TreeSparseData = 1 << 20  // how much data
	TreeUID        = 1234
	TreeGID        = 5678
)

// TreeFixture is what BuildTreeFixture made: the facts a copy must reproduce.
type TreeFixture struct {
	RandomSum  string
	Sparse     []byte                 // the data at TreeSparseAt
	Stats      map[string]unix.Stat_t // every entry (relative path), once built
	Host       string                 // a host file a symlink points at
	HostStat   unix.Stat_t
	HostDir    string // a host directory a symlink points at
	HostBefore []string
}

// TreeCounts are the entries of each kind a faithful copy of a TreeFixture makes,
// and those it leaves out (unix sockets).
type TreeCounts struct {
	Files, Dirs, Symlinks, Specials, Skipped int64
}

// BuildTreeFixture fills src with every kind of entry a volume may hold, and
// outside (a sibling of src) with host data that symlinks in src point at.
func BuildTreeFixture(t testing.TB, src, outside string) *TreeFixture {
	t.Helper()
	fx := &TreeFixture{Host: filepath.Join(outside, "host-secret"), HostDir: filepath.Join(outside, "hostdir")}
	WriteFile(t, fx.Host, "host data")
	WriteFile(t, filepath.Join(fx.HostDir, "a"), "a")
	WriteFile(t, filepath.Join(fx.HostDir, "sub", "b"), "b")
	fx.HostStat = Lstat(t, fx.Host)
	fx.HostBefore = ListTree(t, outside)

	WriteFile(t, filepath.Join(src, "top.txt"), "top")
	WriteFile(t, filepath.Join(src, "a", "b", "c", "deep.txt"), "deep")
	WriteFile(t, filepath.Join(src, "ro", "inside.txt"), "in a read-only dir")
	WriteFile(t, filepath.Join(src, "ro", "sub", "f"), "f")
	WriteFile(t, filepath.Join(src, "locked", "x"), "x")
	WriteFile(t, filepath.Join(src, "suid"), "#!/bin/true\n")
	WriteFile(t, filepath.Join(src, "owned", "file"), "owned")
	WriteFile(t, filepath.Join(src, "empty"), "")
	MkdirAll(t, filepath.Join(src, "shared"))
	MkdirAll(t, filepath.Join(src, "tmp"))
	MkdirAll(t, filepath.Join(src, "emptydir"))

	// Symlinks: out of the tree, into it, in loops, dangling.
	for _, l := range []struct{ target, name string }{
		{fx.Host, "hostlink"},
		{"../outside/host-secret", "rellink"},
		{fx.HostDir, "linkdir"},
		{fx.HostDir + "/", "linkdir-slash"},
		{"loop2", "loop1"},
		{"loop1", "loop2"},
		{"self", "self"},
		{"..", "up"},
		{"does/not/exist", "dangling"},
		{"../../top.txt", "a/b/totop"},
		{strings.Repeat("x/", 500) + "end", "longtarget"}, // XFS takes 1024 bytes at most,
	} {
		if err := os.Symlink(l.target, filepath.Join(src, l.name)); err != nil {
			t.Fatal(err)
		}
	}
	// Special files.
	if err := unix.Mkfifo(filepath.Join(src, "fifo"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(src, "a", "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(src, "sock"), unix.S_IFSOCK|0o600, 0); err != nil {
		t.Fatal(err)
	}
	// Hard links, across directories.
	WriteFile(t, filepath.Join(src, "a", "hl1"), "linked")
	for _, n := range []string{"a/b/hl2", "hl3"} {
		if err := os.Link(filepath.Join(src, "a", "hl1"), filepath.Join(src, n)); err != nil {
			t.Fatal(err)
		}
	}
	// Data: random, and sparse.
	fx.RandomSum = WriteRandom(t, filepath.Join(src, "random.bin"), TreeRandomSize)
	fx.Sparse = make([]byte, TreeSparseData)
	if _, err := rand.Read(fx.Sparse); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(src, "sparse.img"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(fx.Sparse, TreeSparseAt); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(TreeSparseSize); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()

	// Owners, then xattrs, then modes (chown clears setuid).
	for _, n := range []string{"owned", "owned/file", "suid", "hostlink", "fifo", "a/null"} {
		if err := os.Lchown(filepath.Join(src, n), TreeUID, TreeGID); err != nil {
			t.Fatal(err)
		}
	}
	SetXattr(t, filepath.Join(src, "top.txt"), "user.color", "blue")
	SetXattr(t, filepath.Join(src, "top.txt"), "user.empty", "")
	SetXattr(t, filepath.Join(src, "top.txt"), "trusted.secret", "t1")
	SetXattr(t, filepath.Join(src, "a", "b"), "user.dir", "yes")
	SetXattr(t, filepath.Join(src, "a"), "trusted.dir", "t2")
	SetXattr(t, filepath.Join(src, "random.bin"), "user.big", strings.Repeat("v", 2000))
	SetXattr(t, filepath.Join(src, "hostlink"), "trusted.link", "t3")
	SetXattr(t, filepath.Join(src, "fifo"), "trusted.fifo", "t4")
	SetXattr(t, src, "user.root", "r")
	for _, m := range []struct {
		name string
		mode os.FileMode
	}{
		{"suid", 0o755 | os.ModeSetuid},
		{"shared", 0o775 | os.ModeSetgid},
		{"tmp", 0o777 | os.ModeSticky},
		{"ro/sub", 0o555},
		{"ro", 0o555},
		{"locked", 0},
		{"owned/file", 0o640},
	} {
		if err := os.Chmod(filepath.Join(src, m.name), m.mode); err != nil {
			t.Fatal(err)
		}
	}

	// Times, with nanoseconds, deepest entries first so setting them does
	// not change their directory's.
	var paths []string
	if err := filepath.WalkDir(src, func(p string, _ fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	base := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC).UnixNano()
	for i := len(paths) - 1; i >= 0; i-- {
		ts := []unix.Timespec{
			unix.NsecToTimespec(base + int64(i)*1_000_000_007 + 123_456_789),
			unix.NsecToTimespec(base + int64(i)*2_000_000_011 + 987_654_321),
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, paths[i], ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatalf("set times of %s: %v", paths[i], err)
		}
	}
	fx.Stats = make(map[string]unix.Stat_t, len(paths))
	for _, p := range paths {
		rel, _ := filepath.Rel(src, p)
		fx.Stats[rel] = Lstat(t, p)
	}
	return fx
}

// ListTree lists every entry under dir with its type and, for files, content.
func ListTree(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	if err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		e := p + " " + d.Type().String()
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e += " " + string(b)
		}
		out = append(out, e)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// CheckTreeCopy compares the copy dst with the source src as fx recorded it
// before the copy, entry by entry, and returns the counts the copy must report. Metadata are compared before any content is read, since
// reading changes access times.
func CheckTreeCopy(t testing.TB, src, dst string, fx *TreeFixture) (want TreeCounts) {
	t.Helper()
	type pair struct{ src, dst unix.Stat_t }
	got := make(map[string]pair)
	inodes := make(map[uint64]uint64) // source inode -> copy inode
	for rel, s := range fx.Stats {
		p := filepath.Join(dst, rel)
		var d unix.Stat_t
		err := unix.Lstat(p, &d)
		if s.Mode&unix.S_IFMT == unix.S_IFSOCK {
			want.Skipped++
			if err != unix.ENOENT {
				t.Errorf("%s: socket copied (lstat: %v)", rel, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: not copied: %v", rel, err)
			continue
		}
		got[rel] = pair{s, d}
		switch s.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			want.Files++
		case unix.S_IFDIR:
			want.Dirs++
		case unix.S_IFLNK:
			want.Symlinks++
		default:
			want.Specials++
		}
		if d.Mode != s.Mode {
			t.Errorf("%s: mode %o, want %o", rel, d.Mode, s.Mode)
		}
		if d.Uid != s.Uid || d.Gid != s.Gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", rel, d.Uid, d.Gid, s.Uid, s.Gid)
		}
		if d.Atim != s.Atim || d.Mtim != s.Mtim {
			t.Errorf("%s: times %v %v, want %v %v", rel, d.Atim, d.Mtim, s.Atim, s.Mtim)
		}
		if d.Rdev != s.Rdev {
			t.Errorf("%s: rdev %x, want %x", rel, d.Rdev, s.Rdev)
		}
		if s.Mode&unix.S_IFMT != unix.S_IFDIR && d.Size != s.Size {
			t.Errorf("%s: size %d, want %d", rel, d.Size, s.Size)
		}
		if s.Mode&unix.S_IFMT == unix.S_IFREG {
			if d.Nlink != s.Nlink {
				t.Errorf("%s: %d links, want %d", rel, d.Nlink, s.Nlink)
			}
			if ino, ok := inodes[s.Ino]; ok && ino != d.Ino {
				t.Errorf("%s: inode %d, want %d (hard link to the same copy)", rel, d.Ino, ino)
			}
			inodes[s.Ino] = d.Ino
		}
		if s.Ino == d.Ino && s.Dev == d.Dev {
			t.Errorf("%s: the copy is the source inode", rel)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	// Now content, link targets and xattrs.
	for rel, p := range got {
		sp, dp := filepath.Join(src, rel), filepath.Join(dst, rel)
		if sx, dx := Xattrs(t, sp), Xattrs(t, dp); !maps.Equal(sx, dx) {
			t.Errorf("%s: xattrs %q, want %q", rel, dx, sx)
		}
		switch p.src.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			st, _ := os.Readlink(sp)
			dt, err := os.Readlink(dp)
			if err != nil || dt != st {
				t.Errorf("%s: link to %q (%v), want %q", rel, dt, err, st)
			}
		case unix.S_IFREG:
			if p.src.Size < 1<<20 {
				sb, _ := os.ReadFile(sp)
				db, err := os.ReadFile(dp)
				if err != nil || !bytes.Equal(sb, db) {
					t.Errorf("%s: content %q (%v), want %q", rel, db, err, sb)
				}
			}
		}
	}
	return want
}

// CheckTreeData checks the big files of the copy: the random file by hash, the
// sparse one by its data, its zeros and how little space it takes.
func CheckTreeData(t testing.TB, dst string, fx *TreeFixture) {
	t.Helper()
	if got := SHA256File(t, filepath.Join(dst, "random.bin")); got != fx.RandomSum {
		t.Errorf("random.bin: sha256 %s, want %s", got, fx.RandomSum)
	}
	sp := filepath.Join(dst, "sparse.img")
	st := Lstat(t, sp)
	if st.Size != TreeSparseSize {
		t.Errorf("sparse.img: size %d, want %d", st.Size, TreeSparseSize)
	}
	if used := st.Blocks * 512; used > 8<<20 {
		t.Errorf("sparse.img: %d bytes allocated, want about %d: holes filled", used, TreeSparseData)
	}
	if off := Seek(t, sp, 0, unix.SEEK_DATA); off != TreeSparseAt {
		t.Errorf("sparse.img: first data at %d, want %d", off, int64(TreeSparseAt))
	}
	if off := Seek(t, sp, TreeSparseAt, unix.SEEK_HOLE); off < TreeSparseAt+TreeSparseData {
		t.Errorf("sparse.img: hole at %d inside the data", off)
	}
	if !bytes.Equal(ReadAt(t, sp, TreeSparseAt, TreeSparseData), fx.Sparse) {
		t.Errorf("sparse.img: data differs")
	}
	zeros := make([]byte, 1<<20)
	for _, off := range []int64{0, TreeSparseAt - 1<<20, TreeSparseAt + TreeSparseData, TreeSparseSize - 1<<20} {
		if !bytes.Equal(ReadAt(t, sp, off, 1<<20), zeros) {
			t.Errorf("sparse.img: not zeros at %d", off)
		}
	}
}
