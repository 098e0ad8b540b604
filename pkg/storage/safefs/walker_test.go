package safefs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/berth-csi/berth/internal/testutil"
)

// Push enters directories only: a symlink (to a directory, in or out of the
// tree), a file and a mount point are refused with their raw errno.
func TestWalkerPushRefuses(t *testing.T) {
	testutil.RequireRoot(t)
	base := t.TempDir()
	root, host := filepath.Join(base, "root"), filepath.Join(base, "host")
	writeFile(t, filepath.Join(host, "secret"), "host data")
	writeFile(t, filepath.Join(root, "dir", "f"), "f")
	writeFile(t, filepath.Join(root, "file"), "x")
	symlink(t, host, filepath.Join(root, "hostlink"))
	symlink(t, "dir", filepath.Join(root, "dirlink"))
	if err := os.Mkdir(filepath.Join(root, "mnt"), 0o755); err != nil {
		t.Fatal(err)
	}
	bindMount(t, host, filepath.Join(root, "mnt"))

	anchor, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(anchor)
	w := NewWalker(anchor, root)
	defer w.Close()
	for _, tc := range []struct {
		name string
		want error
	}{
		{"hostlink", unix.ENOTDIR}, // O_DIRECTORY|O_NOFOLLOW on a symlink
		{"dirlink", unix.ENOTDIR},
		{"file", unix.ENOTDIR},
		{"mnt", unix.EXDEV},
		{"missing", unix.ENOENT},
		{"..", unix.EXDEV},
	} {
		if err := w.Push(tc.name); err != tc.want {
			t.Errorf("Push(%q) = %v, want %v", tc.name, err, tc.want)
		}
		if w.Depth() != 0 {
			t.Fatalf("depth %d after a refused Push", w.Depth())
		}
	}
	if err := w.Push("dir"); err != nil {
		t.Fatalf("Push(dir): %v", err)
	}
	name, _, ok, err := w.Next()
	if err != nil || !ok || name != "f" {
		t.Fatalf("Next = %q %v %v, want f", name, ok, err)
	}
	if _, _, ok, err := w.Next(); ok || err != nil {
		t.Fatalf("Next at end = %v %v", ok, err)
	}
	if got := w.Path("f"); got != filepath.Join(root, "dir", "f") {
		t.Errorf("Path = %q", got)
	}

	// OpenConfined with O_PATH yields the symlink itself; anything else
	// refuses it.
	fd, err := OpenConfined(anchor, "hostlink", unix.O_PATH)
	if err != nil {
		t.Fatalf("OpenConfined(O_PATH): %v", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Errorf("O_PATH fd mode %o, %v: want the symlink", st.Mode, err)
	}
	unix.Close(fd)
	if _, err := OpenConfined(anchor, "hostlink", unix.O_RDONLY); err != unix.ELOOP {
		t.Errorf("OpenConfined(O_RDONLY) on a symlink = %v, want ELOOP", err)
	}
	if _, err := OpenConfined(anchor, "hostlink/secret", unix.O_RDONLY); err != unix.ELOOP {
		t.Errorf("OpenConfined through a symlink = %v, want ELOOP", err)
	}
}

// Fd reopens levels given back on the way down, and OpenDirChain reaches a
// directory whose path is longer than PATH_MAX.
func TestWalkerDeep(t *testing.T) {
	const depth = 400
	root := t.TempDir()
	name := func(i int) string { return strings.Repeat(string(rune('a'+i%26)), 20) }
	inos := makeChain(t, root, depth, name)
	anchor, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(anchor)
	base := openFDs(t)
	w := NewWalker(anchor, root)
	names := make([]string, 0, depth)
	for i := range depth {
		if err := w.Push(name(i)); err != nil {
			t.Fatalf("push level %d: %v", i, err)
		}
		names = append(names, name(i))
	}
	for d := depth - 1; d >= 0; d-- {
		fd, err := w.Fd()
		if err != nil {
			t.Fatalf("Fd at level %d: %v", d, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Ino != inos[d] {
			t.Fatalf("level %d: inode %d (%v), want %d", d, st.Ino, err, inos[d])
		}
		if n := openFDs(t) - base; n > maxOpenDirs {
			t.Fatalf("level %d: %d fds open", d, n)
		}
		w.Pop()
	}
	w.Close()
	if n := openFDs(t); n != base {
		t.Fatalf("%d fds open after the walk, want %d", n, base)
	}

	if len(strings.Join(names, "/")) <= unix.PathMax {
		t.Fatalf("chain too short for the test")
	}
	fd, err := OpenDirChain(anchor, names, unix.O_RDONLY)
	if err != nil {
		t.Fatalf("OpenDirChain: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Ino != inos[depth-1] {
		t.Errorf("OpenDirChain reached inode %d (%v), want %d", st.Ino, err, inos[depth-1])
	}
	unix.Close(fd)
	if n := openFDs(t); n != base {
		t.Fatalf("%d fds open after OpenDirChain, want %d", n, base)
	}
}
