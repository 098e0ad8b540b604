package safefs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/berth-csi/berth/internal/testutil"
)

// allocated is what Usage should count for path: st_blocks*512, no follow.
func allocated(t testing.TB, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestUsage(t *testing.T) {
	testutil.RequireRoot(t)
	outside := t.TempDir()
	big := filepath.Join(outside, "big")
	writeFile(t, big, strings.Repeat("B", 1<<20))

	tests := []struct {
		name string
		// setup fills root and returns the paths Usage must count besides
		// root itself, each once.
		setup func(t *testing.T, root string) []string
	}{
		{
			name:  "empty directory",
			setup: func(t *testing.T, root string) []string { return nil },
		},
		{
			name: "files of known size",
			setup: func(t *testing.T, root string) []string {
				writeFile(t, filepath.Join(root, "one"), "1")
				writeFile(t, filepath.Join(root, "d", "three-pages"), strings.Repeat("x", 3*4096))
				writeFile(t, filepath.Join(root, "d", "odd"), strings.Repeat("y", 10000))
				for _, p := range []string{"d/three-pages", "d/odd"} {
					fi, err := os.Stat(filepath.Join(root, p))
					if err != nil {
						t.Fatal(err)
					}
					if got := allocated(t, filepath.Join(root, p)); got < fi.Size() {
						t.Fatalf("%s: %d bytes allocated for %d written", p, got, fi.Size())
					}
				}
				return []string{"one", "d", "d/three-pages", "d/odd"}
			},
		},
		{
			name: "sparse file counts allocated blocks",
			setup: func(t *testing.T, root string) []string {
				f, err := os.Create(filepath.Join(root, "sparse"))
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if err := f.Truncate(1 << 30); err != nil {
					t.Fatal(err)
				}
				if _, err := f.WriteAt([]byte(strings.Repeat("s", 4096)), 512<<20); err != nil {
					t.Fatal(err)
				}
				if err := f.Sync(); err != nil {
					t.Fatal(err)
				}
				if got := allocated(t, filepath.Join(root, "sparse")); got >= 1<<20 {
					t.Fatalf("sparse file has %d bytes allocated", got)
				}
				return []string{"sparse"}
			},
		},
		{
			name: "hard links counted once",
			setup: func(t *testing.T, root string) []string {
				writeFile(t, filepath.Join(root, "orig"), strings.Repeat("h", 64<<10))
				if err := os.MkdirAll(filepath.Join(root, "d"), 0o755); err != nil {
					t.Fatal(err)
				}
				for _, n := range []string{"link1", "d/link2"} {
					if err := os.Link(filepath.Join(root, "orig"), filepath.Join(root, n)); err != nil {
						t.Fatal(err)
					}
				}
				return []string{"orig", "d"}
			},
		},
		{
			name: "symlinks not followed",
			setup: func(t *testing.T, root string) []string {
				symlink(t, big, filepath.Join(root, "to-big"))
				symlink(t, outside, filepath.Join(root, "to-dir"))
				symlink(t, "loop", filepath.Join(root, "loop"))
				return []string{"to-big", "to-dir", "loop"}
			},
		},
		{
			name: "special files",
			setup: func(t *testing.T, root string) []string {
				if err := unix.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := unix.Mknod(filepath.Join(root, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
					t.Fatal(err)
				}
				return []string{"fifo", "null"}
			},
		},
		{
			name: "other filesystem skipped",
			setup: func(t *testing.T, root string) []string {
				mnt := filepath.Join(root, "tmpfs")
				if err := os.Mkdir(mnt, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := unix.Mount("berth-test", mnt, "tmpfs", 0, "size=4m"); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
				writeFile(t, filepath.Join(mnt, "data"), strings.Repeat("t", 1<<20))
				writeFile(t, filepath.Join(root, "mine"), "m")
				return []string{"mine"}
			},
		},
		{
			name: "bind mount of the same filesystem skipped",
			setup: func(t *testing.T, root string) []string {
				mnt := filepath.Join(root, "bind")
				if err := os.Mkdir(mnt, 0o755); err != nil {
					t.Fatal(err)
				}
				bindMount(t, outside, mnt)
				return nil
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			counted := tc.setup(t, root)
			wantBytes, wantInodes := allocated(t, root), int64(1+len(counted))
			for _, p := range counted {
				wantBytes += allocated(t, filepath.Join(root, p))
			}
			bytes, inodes, err := Usage(context.Background(), root)
			if err != nil {
				t.Fatalf("Usage: %v", err)
			}
			if bytes != wantBytes || inodes != wantInodes {
				t.Fatalf("Usage = %d bytes, %d inodes; want %d bytes, %d inodes", bytes, inodes, wantBytes, wantInodes)
			}
		})
	}
}

func TestUsageDeep(t *testing.T) {
	testutil.RequireRoot(t)
	const depth = 5000
	root := t.TempDir()
	wantBytes, wantInodes := allocated(t, root), int64(1)
	makeDeep(t, root, depth, func(fd, i int) {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatal(err)
		}
		wantBytes += st.Blocks * 512
		wantInodes++
		// Siblings on both sides of "d" in readdir order at some levels, so a
		// walk that loses its place when it gives back fds would miscount.
		if i%5 == 0 {
			for _, n := range []string{"a", "m", "z"} {
				f, err := unix.Openat(fd, n, unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
				if err != nil {
					t.Fatal(err)
				}
				unix.Close(f)
				wantInodes++
			}
		}
	})
	withFileLimit(t, 256)
	before := openFDs(t)
	bytes, inodes, err := Usage(context.Background(), root)
	if errors.Is(err, unix.EMFILE) {
		t.Fatalf("ran out of fds: %v", err)
	}
	if err != nil {
		t.Fatalf("Usage: %v", err)
	}
	if bytes != wantBytes || inodes != wantInodes {
		t.Fatalf("Usage = %d bytes, %d inodes; want %d bytes, %d inodes", bytes, inodes, wantBytes, wantInodes)
	}
	if after := openFDs(t); after != before {
		t.Fatalf("open fds: %d before, %d after", before, after)
	}
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "file"), "x")
	if err := os.Symlink(dir, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path string
		want       error
	}{
		{"missing", filepath.Join(dir, "nope"), os.ErrNotExist},
		{"file", filepath.Join(dir, "file"), unix.ENOTDIR},
		{"symlink", filepath.Join(dir, "link"), unix.ENOTDIR}, // O_DIRECTORY|O_NOFOLLOW
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := Usage(context.Background(), tc.path); !errors.Is(err, tc.want) {
				t.Fatalf("Usage(%s) = %v, want %v", tc.path, err, tc.want)
			}
		})
	}
}
