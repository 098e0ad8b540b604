package clone

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"golang.org/x/sys/unix"
)

// An incremental copy against an earlier one links exactly the files the quick
// check finds unchanged, and copies every other: changed data, a changed mode or
// xattr, a new file, the tree's own hard links, and a second name of a base inode.
func TestTreeLinksUnchangedFilesFromBase(t *testing.T) {
	testutil.RequireRoot(t)
	root := t.TempDir()
	src, dst := filepath.Join(root, "src"), filepath.Join(root, "dst")
	for _, d := range []string{src, dst, filepath.Join(src, "sub")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(rel, data string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(src, rel), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"same", "data", "mode", "sub/xattr", "pair1", "x", "y"} {
		write(f, "content of "+f)
	}
	if err := os.Link(filepath.Join(src, "pair1"), filepath.Join(src, "pair2")); err != nil {
		t.Fatal(err)
	}
	if _, err := Tree(context.Background(), src, dst, "one", Options{}); err != nil {
		t.Fatal(err)
	}
	// The base holds x and y as one inode (as if they had been hard links when
	// it was made); the source keeps them apart, unchanged.
	base := filepath.Join(dst, "one")
	if err := os.Remove(filepath.Join(base, "y")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(base, "x"), filepath.Join(base, "y")); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(filepath.Join(src, "data"))
	write("data", "CONTENT OF data") // same size, then the old mtime back: not seen...
	later := st.ModTime().Add(time.Second)
	_ = os.Chtimes(filepath.Join(src, "data"), later, later) // ...unless the mtime moves
	if err := os.Chmod(filepath.Join(src, "mode"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(src, "sub/xattr"), "user.k", []byte("v"), 0); err != nil {
		t.Skipf("no user xattrs here: %v", err)
	}
	write("new", "new file")

	stats, err := Tree(context.Background(), src, dst, "two", Options{Base: base})
	if err != nil {
		t.Fatal(err)
	}
	two := filepath.Join(dst, "two")
	ino := func(p string) uint64 {
		t.Helper()
		var s unix.Stat_t
		if err := unix.Lstat(p, &s); err != nil {
			t.Fatal(err)
		}
		return s.Ino
	}
	for f, linked := range map[string]bool{"same": true, "x": true, "y": false, "data": false, "mode": false, "sub/xattr": false, "pair1": false, "new": false} {
		if f == "new" {
			if ino(filepath.Join(two, f)) == 0 {
				t.Error("new file missing")
			}
		} else if got := ino(filepath.Join(two, f)) == ino(filepath.Join(base, f)); got != linked {
			t.Errorf("%s linked to the base: %v, want %v", f, got, linked)
		}
		want, _ := os.ReadFile(filepath.Join(src, f))
		if got, _ := os.ReadFile(filepath.Join(two, f)); string(got) != string(want) {
			t.Errorf("%s holds %q, want %q", f, got, want)
		}
	}
	if ino(filepath.Join(two, "pair1")) != ino(filepath.Join(two, "pair2")) {
		t.Error("the tree's own hard link pair1/pair2 is not kept")
	}
	if stats.FilesLinked != 2 || stats.BytesLinked != int64(len("content of same")+len("content of x")) {
		t.Errorf("FilesLinked %d, BytesLinked %d; want 2 files, %d bytes", stats.FilesLinked, stats.BytesLinked, len("content of same")+len("content of x"))
	}
	if stats.Files != 9 {
		t.Errorf("Files = %d, want 9 (linked ones included)", stats.Files)
	}
}

// A base that is not a directory fails the copy; one on another filesystem
// (linkat's EXDEV) makes it a full copy.
func TestTreeBaseErrors(t *testing.T) {
	testutil.RequireRoot(t)
	root := t.TempDir()
	src := filepath.Join(root, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("f"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Tree(context.Background(), src, root, "bad", Options{Base: filepath.Join(root, "missing")}); err == nil {
		t.Error("a missing base was accepted")
	}
	other := mountFS(t, ext4FS, 64<<20)
	if _, err := Tree(context.Background(), src, other, "one", Options{}); err != nil {
		t.Fatal(err)
	}
	stats, err := Tree(context.Background(), src, root, "two", Options{Base: filepath.Join(other, "one")})
	if err != nil {
		t.Fatal(err)
	}
	if stats.FilesLinked != 0 || stats.Files != 1 {
		t.Errorf("base on another filesystem: %+v, want one file copied", stats)
	}
}
