package safefs

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-csi/berth/internal/testutil"
)

const walkTimeout = 30 * time.Second

func TestRemoveTree(t *testing.T) {
	testutil.RequireRoot(t)
	tests := []struct {
		name string
		// setup builds the entry vol of parent; outside is a directory beside
		// the pool holding host data that must survive.
		setup func(t *testing.T, vol, outside string)
		check func(t *testing.T, outside string)
	}{
		{
			name: "regular tree",
			setup: func(t *testing.T, vol, _ string) {
				writeFile(t, filepath.Join(vol, "a", "b", "c", "file"), "x")
				writeFile(t, filepath.Join(vol, "a", "f1"), "y")
				writeFile(t, filepath.Join(vol, "top"), "z")
				if err := os.MkdirAll(filepath.Join(vol, "empty", "dir"), 0o755); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "directories with mode 000",
			setup: func(t *testing.T, vol, _ string) {
				writeFile(t, filepath.Join(vol, "locked", "inner", "file"), "x")
				for _, d := range []string{"locked/inner", "locked"} {
					if err := os.Chmod(filepath.Join(vol, d), 0); err != nil {
						t.Fatal(err)
					}
				}
			},
		},
		{
			name: "symlink to outside file",
			setup: func(t *testing.T, vol, outside string) {
				writeFile(t, filepath.Join(vol, "keep"), "x")
				symlink(t, filepath.Join(outside, "secret"), filepath.Join(vol, "link"))
				symlink(t, "../../outside/secret", filepath.Join(vol, "rel"))
			},
			check: func(t *testing.T, outside string) {
				assertContent(t, filepath.Join(outside, "secret"), "host data")
			},
		},
		{
			name: "symlink to outside directory",
			setup: func(t *testing.T, vol, outside string) {
				writeFile(t, filepath.Join(outside, "hostdir", "a"), "a")
				writeFile(t, filepath.Join(outside, "hostdir", "sub", "b"), "b")
				symlink(t, filepath.Join(outside, "hostdir"), filepath.Join(vol, "dlink"))
				symlink(t, filepath.Join(outside, "hostdir")+"/", filepath.Join(vol, "dlink-slash"))
			},
			check: func(t *testing.T, outside string) {
				assertContent(t, filepath.Join(outside, "hostdir", "a"), "a")
				assertContent(t, filepath.Join(outside, "hostdir", "sub", "b"), "b")
			},
		},
		{
			name: "volume itself a symlink to outside directory",
			setup: func(t *testing.T, vol, outside string) {
				writeFile(t, filepath.Join(outside, "hostdir", "a"), "a")
				symlink(t, filepath.Join(outside, "hostdir"), vol)
			},
			check: func(t *testing.T, outside string) {
				assertContent(t, filepath.Join(outside, "hostdir", "a"), "a")
			},
		},
		{
			name: "volume itself a file",
			setup: func(t *testing.T, vol, _ string) {
				writeFile(t, vol, "x")
			},
		},
		{
			name: "symlink loops",
			setup: func(t *testing.T, vol, _ string) {
				if err := os.Mkdir(vol, 0o755); err != nil {
					t.Fatal(err)
				}
				symlink(t, "l2", filepath.Join(vol, "l1"))
				symlink(t, "l1", filepath.Join(vol, "l2"))
				symlink(t, "self", filepath.Join(vol, "self"))
				symlink(t, ".", filepath.Join(vol, "dot"))
				symlink(t, "..", filepath.Join(vol, "up"))
			},
		},
		{
			name: "fifo",
			setup: func(t *testing.T, vol, _ string) {
				if err := os.MkdirAll(filepath.Join(vol, "d"), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := unix.Mkfifo(filepath.Join(vol, "d", "fifo"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "device node and socket",
			setup: func(t *testing.T, vol, _ string) {
				if err := os.Mkdir(vol, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := unix.Mknod(filepath.Join(vol, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
					t.Fatal(err)
				}
				if err := unix.Mknod(filepath.Join(vol, "sock"), unix.S_IFSOCK|0o666, 0); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T, _ string) {
				if fi, err := os.Stat("/dev/null"); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
					t.Fatalf("/dev/null damaged: %v %v", fi, err)
				}
			},
		},
		{
			name: "hard links to outside file",
			setup: func(t *testing.T, vol, outside string) {
				if err := os.MkdirAll(filepath.Join(vol, "d"), 0o755); err != nil {
					t.Fatal(err)
				}
				for _, n := range []string{"hl", "d/hl2"} {
					if err := os.Link(filepath.Join(outside, "secret"), filepath.Join(vol, n)); err != nil {
						t.Fatal(err)
					}
				}
			},
			check: func(t *testing.T, outside string) {
				assertContent(t, filepath.Join(outside, "secret"), "host data")
				var st unix.Stat_t
				if err := unix.Stat(filepath.Join(outside, "secret"), &st); err != nil || st.Nlink != 1 {
					t.Fatalf("outside file nlink = %d, %v; want 1", st.Nlink, err)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			parent, outside := filepath.Join(base, "pool"), filepath.Join(base, "outside")
			writeFile(t, filepath.Join(outside, "secret"), "host data")
			writeFile(t, filepath.Join(parent, "neighbour", "file"), "n")
			vol := filepath.Join(parent, "vol")
			tc.setup(t, vol, outside)

			if err := within(t, walkTimeout, func() error { return RemoveTree(parent, "vol") }); err != nil {
				t.Fatalf("RemoveTree: %v", err)
			}
			if _, err := os.Lstat(vol); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("volume still there: %v", err)
			}
			assertContent(t, filepath.Join(parent, "neighbour", "file"), "n")
			if tc.check != nil {
				tc.check(t, outside)
			}
			// A second call finds nothing to do.
			if err := RemoveTree(parent, "vol"); err != nil {
				t.Fatalf("second RemoveTree: %v", err)
			}
		})
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func TestRemoveTreeMissing(t *testing.T) {
	parent := t.TempDir()
	if err := RemoveTree(parent, "nope"); err != nil {
		t.Fatalf("missing name: %v, want nil", err)
	}
	if err := RemoveTree(filepath.Join(parent, "no-parent"), "vol"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing parent: %v, want ErrNotExist", err)
	}
}

func TestRemoveTreeInvalidName(t *testing.T) {
	parent := t.TempDir()
	writeFile(t, filepath.Join(parent, "a", "b"), "x")
	for _, name := range []string{"", ".", "..", "a/b", "/a", "a/", "a\x00"} {
		t.Run(strconv.Quote(name), func(t *testing.T) {
			if err := RemoveTree(parent, name); !errors.Is(err, unix.EINVAL) {
				t.Fatalf("RemoveTree(%q) = %v, want EINVAL", name, err)
			}
		})
	}
	assertContent(t, filepath.Join(parent, "a", "b"), "x")
}

func TestRemoveTreeDeep(t *testing.T) {
	testutil.RequireRoot(t)
	const depth = 5000
	parent := t.TempDir()
	vol := filepath.Join(parent, "vol")
	if err := os.Mkdir(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	makeDeep(t, vol, depth, func(fd, i int) {
		// A few siblings per level so reading resumes mid-directory after
		// an fd was given back.
		if i%7 == 0 {
			for _, n := range []string{"a", "m", "z"} {
				f, err := unix.Openat(fd, n, unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
				if err != nil {
					t.Fatal(err)
				}
				unix.Close(f)
			}
			if err := unix.Mkdirat(fd, "e", 0o755); err != nil {
				t.Fatal(err)
			}
		}
	})
	withFileLimit(t, 256)
	before := openFDs(t)
	err := within(t, 2*walkTimeout, func() error { return RemoveTree(parent, "vol") })
	if errors.Is(err, unix.EMFILE) {
		t.Fatalf("ran out of fds: %v", err)
	}
	if err != nil {
		t.Fatalf("RemoveTree: %v", err)
	}
	if _, err := os.Lstat(vol); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("volume still there: %v", err)
	}
	if after := openFDs(t); after != before {
		t.Fatalf("open fds: %d before, %d after", before, after)
	}
}

func TestRemoveTreeNestedMount(t *testing.T) {
	testutil.RequireRoot(t)
	base := t.TempDir()
	parent, src := filepath.Join(base, "pool"), filepath.Join(base, "src")
	writeFile(t, filepath.Join(src, "host", "file"), "host data")
	vol := filepath.Join(parent, "vol")
	mnt := filepath.Join(vol, "sub", "mnt")
	writeFile(t, filepath.Join(vol, "sub", "file"), "x")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	bindMount(t, src, mnt)

	err := within(t, walkTimeout, func() error { return RemoveTree(parent, "vol") })
	if !errors.Is(err, unix.EBUSY) {
		t.Fatalf("RemoveTree = %v, want EBUSY", err)
	}
	assertContent(t, filepath.Join(src, "host", "file"), "host data")
	assertContent(t, filepath.Join(mnt, "host", "file"), "host data")

	// Once unmounted the tree goes.
	if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := RemoveTree(parent, "vol"); err != nil {
		t.Fatalf("RemoveTree after unmount: %v", err)
	}
	assertContent(t, filepath.Join(src, "host", "file"), "host data")
}

func TestRemoveTreeMountedVolume(t *testing.T) {
	testutil.RequireRoot(t)
	base := t.TempDir()
	parent, src := filepath.Join(base, "pool"), filepath.Join(base, "src")
	writeFile(t, filepath.Join(src, "file"), "host data")
	if err := os.MkdirAll(filepath.Join(parent, "vol"), 0o755); err != nil {
		t.Fatal(err)
	}
	bindMount(t, src, filepath.Join(parent, "vol"))
	if err := RemoveTree(parent, "vol"); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("RemoveTree = %v, want EBUSY", err)
	}
	assertContent(t, filepath.Join(src, "file"), "host data")
}

// Entries created while the walk runs are removed too, or the walk says the
// directory would not empty; either way a later call finishes the job.
func TestRemoveTreeConcurrentCreate(t *testing.T) {
	parent := t.TempDir()
	vol := filepath.Join(parent, "vol")
	for i := range 20 {
		writeFile(t, filepath.Join(vol, "busy", "f"+strconv.Itoa(i)), "x")
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			p := filepath.Join(vol, "busy", "new"+strconv.Itoa(i))
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				return // the directory is gone
			}
		}
	}()
	err := within(t, walkTimeout, func() error { return RemoveTree(parent, "vol") })
	close(stop)
	wg.Wait()
	if err != nil && !errors.Is(err, unix.ENOTEMPTY) {
		t.Fatalf("RemoveTree during writes: %v", err)
	}
	if err := RemoveTree(parent, "vol"); err != nil {
		t.Fatalf("RemoveTree: %v", err)
	}
	if _, err := os.Lstat(vol); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("volume still there: %v", err)
	}
}
