package safefs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// makeChain creates depth nested directories under root, level i named by
// name(i), and returns their inode numbers.
func makeChain(t *testing.T, root string, depth int, name func(i int) string) []uint64 {
	t.Helper()
	inos := make([]uint64, 0, depth)
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { unix.Close(fd) }()
	for i := range depth {
		if err := unix.Mkdirat(fd, name(i), 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(fd, name(i), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		fd = next
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatal(err)
		}
		inos = append(inos, st.Ino)
	}
	return inos
}

// The window of open levels stays bounded on the way down, and every level
// reopened on the way up (through chunks of long names) is the right inode.
func TestDirStackWindow(t *testing.T) {
	const depth = 300
	root := t.TempDir()
	name := func(i int) string { return strings.Repeat(string(rune('a'+i%26)), 255) }
	inos := makeChain(t, root, depth, name)
	anchor, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(anchor)
	base := openFDs(t)
	s := newDirStack(anchor, root)
	defer s.close()
	for i := range depth {
		if err := s.push(name(i)); err != nil {
			t.Fatalf("push level %d: %v", i, err)
		}
		if n := openFDs(t) - base; n > maxOpenDirs {
			t.Fatalf("level %d: %d fds open, want at most %d", i, n, maxOpenDirs)
		}
	}
	for d := depth - 1; d >= 0; d-- {
		if err := s.ensureOpen(d); err != nil {
			t.Fatalf("reopen level %d: %v", d, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(s.top().fd, &st); err != nil {
			t.Fatal(err)
		}
		if st.Ino != inos[d] {
			t.Fatalf("level %d: inode %d, want %d", d, st.Ino, inos[d])
		}
		if n := openFDs(t) - base; n > maxOpenDirs {
			t.Fatalf("level %d: %d fds open, want at most %d", d, n, maxOpenDirs)
		}
		s.pop()
	}
	if n := openFDs(t); n != base {
		t.Fatalf("%d fds open after the walk, want %d", n, base)
	}
}

// A level swapped for another directory while its fd was closed is refused.
func TestDirStackReplacedLevel(t *testing.T) {
	const depth, swapped = 100, 40
	root := t.TempDir()
	makeChain(t, root, depth, func(int) string { return "d" })
	anchor, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(anchor)
	base := openFDs(t)
	s := newDirStack(anchor, root)
	for range depth {
		if err := s.push("d"); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(root, strings.Repeat("d/", swapped+1))
	if err := os.Rename(p, filepath.Join(filepath.Dir(p), "moved")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(p, strings.Repeat("d/", depth)), 0o755); err != nil {
		t.Fatal(err)
	}
	for s.depth() > swapped {
		if err = s.ensureOpen(s.depth() - 1); err != nil {
			break
		}
		s.pop()
	}
	if !errors.Is(err, unix.ESTALE) {
		t.Fatalf("walk back over a replaced level: %v, want ESTALE", err)
	}
	s.close()
	if n := openFDs(t); n != base {
		t.Fatalf("%d fds open after the walk, want %d", n, base)
	}
}
