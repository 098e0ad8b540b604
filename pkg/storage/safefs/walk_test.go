package safefs

import (
	"context"
	"errors"
	"fmt"
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

// A level moved to another parent while its fd was closed stops the walk
// with ESTALE as soon as the walk climbs above it, whether the new parent is
// inside the anchor or outside it; the walk never climbs into the new parent.
func TestDirStackMovedLevel(t *testing.T) {
	const depth, moved = 100, 40
	for _, to := range []string{"anchor/elsewhere", "outside"} {
		t.Run(to, func(t *testing.T) {
			root := t.TempDir()
			anchorDir := filepath.Join(root, "anchor")
			for _, d := range []string{anchorDir, filepath.Join(root, to)} {
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			inos := makeChain(t, anchorDir, depth, func(int) string { return "d" })
			anchor, err := unix.Open(anchorDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(anchor)
			base := openFDs(t)
			s := newDirStack(anchor, anchorDir)
			for range depth {
				if err := s.push("d"); err != nil {
					t.Fatal(err)
				}
			}
			p := filepath.Join(anchorDir, strings.Repeat("d/", moved+1))
			if err := os.Rename(p, filepath.Join(root, to, "d")); err != nil {
				t.Fatal(err)
			}
			// A new chain where the moved one was, to tempt a walk by name.
			if err := os.MkdirAll(filepath.Join(p, strings.Repeat("d/", depth)), 0o755); err != nil {
				t.Fatal(err)
			}
			for s.depth() > 0 {
				if err = s.ensureOpen(s.depth() - 1); err != nil {
					break
				}
				var st unix.Stat_t
				if err := unix.Fstat(s.top().fd, &st); err != nil {
					t.Fatal(err)
				}
				if st.Ino != inos[s.depth()-1] {
					t.Fatalf("level %d: inode %d, want %d", s.depth()-1, st.Ino, inos[s.depth()-1])
				}
				s.pop()
			}
			if !errors.Is(err, unix.ESTALE) {
				t.Fatalf("walk back over a moved level: %v, want ESTALE", err)
			}
			if s.depth() != moved {
				t.Fatalf("walk stopped at depth %d, want %d (climbing above the moved level)", s.depth(), moved)
			}
			s.close()
			if n := openFDs(t); n != base {
				t.Fatalf("%d fds open after the walk, want %d", n, base)
			}
		})
	}
}

// Climbing back through levels whose fds were pushed out costs one lookup per
// level, so removing or measuring a chain costs lookups linear in its depth
// (re-descending from the anchor made it quadratic: about depth²/32).
func TestWalksClimbLinearly(t *testing.T) {
	const depth = 2000
	for _, walk := range []string{"usage", "remove"} {
		t.Run(walk, func(t *testing.T) {
			root := t.TempDir()
			makeChain(t, root, depth, func(int) string { return "d" })
			anchor, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(anchor)
			s := newDirStack(anchor, root)
			defer s.close()
			switch walk {
			case "usage":
				_, inodes, err := usage(s)
				if err != nil {
					t.Fatal(err)
				}
				if inodes != depth+1 {
					t.Fatalf("%d inodes, want %d", inodes, depth+1)
				}
			case "remove":
				if err := removeTree(s, "d"); err != nil {
					t.Fatal(err)
				}
				if _, err := os.Stat(filepath.Join(root, "d")); !os.IsNotExist(err) {
					t.Fatalf("chain still there: %v", err)
				}
			}
			if s.lookups > depth {
				t.Fatalf("%d lookups to reopen levels of a %d-deep chain, want at most %d", s.lookups, depth, depth)
			}
		})
	}
}

// Cancelling the context stops a walk between entries.
func TestUsageCancelled(t *testing.T) {
	root := t.TempDir()
	for i := range 2 * ctxEvery {
		writeFile(t, filepath.Join(root, fmt.Sprintf("f%d", i)), "")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := Usage(ctx, root); !errors.Is(err, context.Canceled) {
		t.Fatalf("Usage with a cancelled context = %v, want context.Canceled", err)
	}
	if err := RemoveTreeContext(ctx, filepath.Dir(root), filepath.Base(root)); !errors.Is(err, context.Canceled) {
		t.Fatalf("RemoveTreeContext with a cancelled context = %v, want context.Canceled", err)
	}
	if _, err := os.Stat(root); err != nil {
		t.Fatalf("tree gone although the removal was cancelled: %v", err)
	}
}

// A file with n names is credited 1/n at each name: once when all its names
// are in the tree, and only for the names inside it otherwise.
func TestUsageLinkShares(t *testing.T) {
	root := t.TempDir()
	tree := filepath.Join(root, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(tree, "in"), strings.Repeat("i", 64<<10))
	writeFile(t, filepath.Join(root, "out"), strings.Repeat("o", 64<<10))
	for k := range 3 {
		if err := os.Link(filepath.Join(tree, "in"), filepath.Join(tree, fmt.Sprintf("in%d", k))); err != nil {
			t.Fatal(err)
		}
	}
	// "out" has four names, one of them in the tree: a quarter is the tree's.
	for k := range 3 {
		dir := root
		if k == 0 {
			dir = tree
		}
		if err := os.Link(filepath.Join(root, "out"), filepath.Join(dir, fmt.Sprintf("out%d", k))); err != nil {
			t.Fatal(err)
		}
	}
	var st unix.Stat_t
	for _, p := range []string{tree, filepath.Join(tree, "in")} {
		var s unix.Stat_t
		if err := unix.Stat(p, &s); err != nil {
			t.Fatal(err)
		}
		st.Blocks += s.Blocks
	}
	var out unix.Stat_t
	if err := unix.Stat(filepath.Join(root, "out"), &out); err != nil {
		t.Fatal(err)
	}
	want := (st.Blocks + out.Blocks/4) * 512
	bytes, inodes, err := Usage(context.Background(), tree)
	if err != nil {
		t.Fatal(err)
	}
	if bytes != want || inodes != 2 {
		t.Fatalf("Usage = %d bytes, %d inodes; want %d bytes, 2 inodes (the quarter inode of out rounds down)", bytes, inodes, want)
	}
}
