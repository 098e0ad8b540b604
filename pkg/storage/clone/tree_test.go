package clone

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"golang.org/x/sys/unix"
)

func TestTree(t *testing.T) {
	for _, tfs := range allFS {
		t.Run(tfs.name, func(t *testing.T) {
			mnt := mountFS(t, tfs, fsSize)
			src, outside, snaps := filepath.Join(mnt, "vol"), filepath.Join(mnt, "outside"), filepath.Join(mnt, "snaps")
			mkdirAll(t, src)
			mkdirAll(t, snaps)
			fx := buildFixture(t, src, outside)
			dst := filepath.Join(snaps, "copy")

			var progress []int64
			o := Options{Progress: func(n int64) { progress = append(progress, n) }}
			st, err := within(t, treeTimeout, func() (Stats, error) {
				return Tree(context.Background(), src, snaps, "copy", o)
			})
			if err != nil {
				t.Fatalf("Tree: %v", err)
			}
			t.Logf("stats: %+v", st)

			want := checkCopy(t, src, dst, fx)
			if st.Files != want.Files || st.Dirs != want.Dirs || st.Symlinks != want.Symlinks ||
				st.Specials != want.Specials || st.Skipped != want.Skipped {
				t.Errorf("stats %+v, want counts %+v", st, want)
			}
			if st.Reflinked != tfs.reflink {
				t.Errorf("Reflinked = %v, want %v", st.Reflinked, tfs.reflink)
			}
			if tfs.reflink && (st.BytesCopied != 0 || st.BytesCloned < randomSize+sparseSize) {
				t.Errorf("reflink copy: %d bytes cloned, %d copied", st.BytesCloned, st.BytesCopied)
			}
			if !tfs.reflink && (st.BytesCloned != 0 || st.BytesCopied < randomSize+sparseData || st.BytesCopied > randomSize+2*sparseData) {
				t.Errorf("plain copy: %d bytes cloned, %d copied (holes copied?)", st.BytesCloned, st.BytesCopied)
			}
			if st.XattrsSkipped != 0 {
				t.Errorf("XattrsSkipped = %d", st.XattrsSkipped)
			}
			if len(progress) == 0 || !slices.IsSorted(progress) || progress[len(progress)-1] != st.BytesCloned+st.BytesCopied {
				t.Errorf("progress %v, want non-decreasing up to %d", progress, st.BytesCloned+st.BytesCopied)
			}
			checkData(t, dst, fx)

			// Symlinks were copied, never followed: host data untouched, and
			// nothing of it in the copy.
			assertContent(t, fx.Host, "host data")
			if hs := lstat(t, fx.Host); hs.Mtim != fx.HostStat.Mtim || hs.Ino != fx.HostStat.Ino {
				t.Errorf("host file changed")
			}
			if x := xattrs(t, fx.Host); len(x) != 0 {
				t.Errorf("host file got xattrs %q: a symlink was followed", x)
			}
			if got := listTree(t, outside); !slices.Equal(got, fx.HostBefore) {
				t.Errorf("outside changed:\n%v\nwant\n%v", got, fx.HostBefore)
			}
			if ents, _ := os.ReadDir(snaps); len(ents) != 1 {
				t.Errorf("destination parent holds %d entries, want 1", len(ents))
			}

			// The copy is independent of the source (copy on write).
			f, err := os.OpenFile(filepath.Join(src, "random.bin"), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(bytes.Repeat([]byte{0xee}, 1<<20), 4096); err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte("appended"), randomSize); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if err := os.WriteFile(filepath.Join(src, "top.txt"), []byte("changed"), 0); err != nil {
				t.Fatal(err)
			}
			if got := sha256File(t, filepath.Join(dst, "random.bin")); got != fx.RandomSum {
				t.Errorf("copy changed with its source")
			}
			assertContent(t, filepath.Join(dst, "top.txt"), "top")
		})
	}
}

// Always on a filesystem that cannot clone fails; Never on one that can
// copies the data, taking real space.
func TestTreeReflinkModes(t *testing.T) {
	t.Run("always on ext4", func(t *testing.T) {
		mnt := mountFS(t, ext4FS, 512<<20)
		writeFile(t, filepath.Join(mnt, "vol", "f"), "data")
		_, err := Tree(context.Background(), filepath.Join(mnt, "vol"), mnt, "copy", Options{Reflink: Always})
		if !errors.Is(err, ErrNoReflink) || !errors.Is(err, unix.EOPNOTSUPP) {
			t.Fatalf("Tree(Always) on ext4 = %v, want ErrNoReflink wrapping EOPNOTSUPP", err)
		}
	})
	t.Run("always and never on xfs", func(t *testing.T) {
		mnt := mountFS(t, xfsReflink, fsSize)
		src := filepath.Join(mnt, "vol")
		mkdirAll(t, src)
		sum := writeRandom(t, filepath.Join(src, "data"), randomSize)
		used := func() int64 {
			fd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if err := unix.Syncfs(fd); err != nil {
				t.Fatal(err)
			}
			var s unix.Statfs_t
			if err := unix.Fstatfs(fd, &s); err != nil {
				t.Fatal(err)
			}
			return int64(s.Blocks-s.Bfree) * s.Bsize
		}
		for _, tc := range []struct {
			mode      Mode
			reflinked bool
		}{{Always, true}, {Never, false}} {
			before := used()
			st, err := Tree(context.Background(), src, mnt, tc.mode.String(), Options{Reflink: tc.mode})
			if err != nil {
				t.Fatalf("Tree(%v): %v", tc.mode, err)
			}
			grew := used() - before
			if st.Reflinked != tc.reflinked {
				t.Errorf("%v: Reflinked = %v", tc.mode, st.Reflinked)
			}
			if tc.reflinked && grew > randomSize/4 {
				t.Errorf("%v: the copy took %d bytes, want extents shared", tc.mode, grew)
			}
			if !tc.reflinked && (grew < randomSize || st.BytesCopied != randomSize) {
				t.Errorf("%v: the copy took %d bytes, copied %d, want a full copy", tc.mode, grew, st.BytesCopied)
			}
			if got := sha256File(t, filepath.Join(mnt, tc.mode.String(), "data")); got != sum {
				t.Errorf("%v: content differs", tc.mode)
			}
		}
	})
}

// Cancelling the context stops a copy inside a large file, promptly.
func TestTreeCancel(t *testing.T) {
	mnt := mountFS(t, ext4FS, 1<<30)
	src := filepath.Join(mnt, "vol")
	mkdirAll(t, src)
	const size = 512 << 20
	f, err := os.Create(filepath.Join(src, "big"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte{0xab}, 8<<20)
	for off := int64(0); off < size; off += int64(len(chunk)) {
		if _, err := f.WriteAt(chunk, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	writeFile(t, filepath.Join(src, "z", "after"), "after")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var cancelled time.Time
	o := Options{Progress: func(n int64) {
		if n >= 64<<20 && cancelled.IsZero() {
			cancelled = time.Now()
			cancel()
		}
	}}
	st, err := within(t, treeTimeout, func() (Stats, error) { return Tree(ctx, src, mnt, "copy", o) })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Tree after cancel = %v, want context.Canceled", err)
	}
	if d := time.Since(cancelled); d > 2*time.Second {
		t.Errorf("Tree returned %v after cancel", d)
	}
	if st.BytesCopied >= size {
		t.Errorf("copied %d bytes of %d: not stopped inside the file", st.BytesCopied, size)
	}

	// Cancelled before it starts: nothing but the root is made.
	cancel()
	st, err = Tree(ctx, src, mnt, "copy2", Options{})
	if !errors.Is(err, context.Canceled) || st.Files != 0 {
		t.Fatalf("Tree with a cancelled context = %+v, %v", st, err)
	}
}

// A tree deeper than PATH_MAX and than the fd limit is copied whole, with
// a hard link spanning thousands of levels, and no fd leaks.
func TestTreeDeep(t *testing.T) {
	testutil.RequireRoot(t)
	const depth = 3000
	base := t.TempDir()
	src := filepath.Join(base, "vol")
	mkdirAll(t, src)
	fd, err := unix.Open(src, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var linkFd int
	for i := 1; i <= depth; i++ {
		if err := unix.Mkdirat(fd, "d", 0o750); err != nil {
			t.Fatal(err)
		}
		if i%500 == 0 {
			f, err := unix.Openat(fd, "f", unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			unix.Write(f, []byte("level"))
			unix.Close(f)
		}
		next, err := unix.Openat(fd, "d", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if i == 1000 {
			linkFd = fd
		} else {
			unix.Close(fd)
		}
		fd = next
	}
	if err := unix.Mkdirat(fd, "leaf", 0o555); err != nil {
		t.Fatal(err)
	}
	f, err := unix.Openat(fd, "bottom", unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	unix.Write(f, []byte("bottom"))
	unix.Close(f)
	if err := unix.Linkat(fd, "bottom", linkFd, "hl", 0); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	unix.Close(linkFd)

	withFileLimit(t, 256)
	before := openFDs(t)
	st, err := within(t, 4*treeTimeout, func() (Stats, error) {
		return Tree(context.Background(), src, base, "copy", Options{})
	})
	if err != nil {
		t.Fatalf("Tree: %v", err)
	}
	if after := openFDs(t); after != before {
		t.Errorf("open fds: %d before, %d after", before, after)
	}
	if st.Dirs != depth+2 || st.Files != depth/500+2 {
		t.Errorf("stats %+v, want %d dirs and %d files", st, depth+2, depth/500+2)
	}
	// Walk the copy down by fds and check it.
	fd, err = unix.Open(filepath.Join(base, "copy"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var hl unix.Stat_t
	for i := 1; i <= depth; i++ {
		next, err := unix.Openat(fd, "d", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("copy level %d: %v", i, err)
		}
		if i == 1000 {
			if err := unix.Fstatat(fd, "hl", &hl, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatalf("hard link at level 1000: %v", err)
			}
		}
		unix.Close(fd)
		fd = next
	}
	defer unix.Close(fd)
	var bottom, leaf unix.Stat_t
	if err := unix.Fstatat(fd, "bottom", &bottom, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
	if bottom.Ino != hl.Ino || bottom.Nlink != 2 {
		t.Errorf("bottom inode %d (%d links), hl inode %d: want one inode with 2 links", bottom.Ino, bottom.Nlink, hl.Ino)
	}
	if err := unix.Fstatat(fd, "leaf", &leaf, unix.AT_SYMLINK_NOFOLLOW); err != nil || leaf.Mode&0o7777 != 0o555 {
		t.Errorf("leaf: mode %o, %v", leaf.Mode&0o7777, err)
	}
}

// A directory entry that is a symlink is copied as a symlink and never
// entered, wherever it points.
func TestTreeSymlinkedDirectory(t *testing.T) {
	testutil.RequireRoot(t)
	base := t.TempDir()
	src, host := filepath.Join(base, "vol"), filepath.Join(base, "host")
	writeFile(t, filepath.Join(host, "secret"), "host data")
	writeFile(t, filepath.Join(src, "real", "f"), "f")
	for _, l := range []struct{ target, name string }{
		{host, "sub"},
		{"real", "inner"},
		{"/", "root"},
	} {
		if err := os.Symlink(l.target, filepath.Join(src, l.name)); err != nil {
			t.Fatal(err)
		}
	}
	st, err := Tree(context.Background(), src, base, "copy", Options{})
	if err != nil {
		t.Fatalf("Tree: %v", err)
	}
	if st.Symlinks != 3 || st.Dirs != 2 || st.Files != 1 {
		t.Errorf("stats %+v, want 3 symlinks, 2 dirs, 1 file", st)
	}
	for _, n := range []string{"sub", "inner", "root"} {
		s := lstat(t, filepath.Join(base, "copy", n))
		if s.Mode&unix.S_IFMT != unix.S_IFLNK {
			t.Errorf("%s: mode %o, want a symlink", n, s.Mode)
		}
	}
	if got, _ := os.Readlink(filepath.Join(base, "copy", "sub")); got != host {
		t.Errorf("sub -> %q, want %q", got, host)
	}
	assertContent(t, filepath.Join(host, "secret"), "host data")
}

// A mount inside the source is another filesystem's content: skipped.
func TestTreeMountPoint(t *testing.T) {
	testutil.RequireRoot(t)
	base := t.TempDir()
	src, other := filepath.Join(base, "vol"), filepath.Join(base, "other")
	writeFile(t, filepath.Join(other, "secret"), "other data")
	writeFile(t, filepath.Join(src, "keep"), "keep")
	mnt := filepath.Join(src, "sub", "mnt")
	mkdirAll(t, mnt)
	testutil.DetachOnCleanup(t, mnt)
	if err := unix.Mount(other, mnt, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	st, err := Tree(context.Background(), src, base, "copy", Options{})
	if err != nil {
		t.Fatalf("Tree: %v", err)
	}
	if st.Skipped != 1 {
		t.Errorf("Skipped = %d, want 1", st.Skipped)
	}
	if _, err := os.Lstat(filepath.Join(base, "copy", "sub", "mnt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("mount point copied: %v", err)
	}
	assertContent(t, filepath.Join(base, "copy", "keep"), "keep")
}

func TestTreeDestination(t *testing.T) {
	testutil.RequireRoot(t)
	tests := []struct {
		name    string
		setup   func(t *testing.T, base string) (src, parent, dstName string, o Options)
		wantErr error
		check   func(t *testing.T, base string, st Stats)
	}{
		{
			name: "destination exists",
			setup: func(t *testing.T, base string) (string, string, string, Options) {
				mkdirAll(t, filepath.Join(base, "copy"))
				return filepath.Join(base, "vol"), base, "copy", Options{}
			},
			wantErr: os.ErrExist,
		},
		{
			name: "invalid name",
			setup: func(t *testing.T, base string) (string, string, string, Options) {
				return filepath.Join(base, "vol"), base, "a/b", Options{}
			},
			wantErr: unix.EINVAL,
		},
		{
			name: "invalid mode",
			setup: func(t *testing.T, base string) (string, string, string, Options) {
				return filepath.Join(base, "vol"), base, "copy", Options{Reflink: Mode(7)}
			},
			wantErr: unix.EINVAL,
		},
		{
			name: "source is a symlink",
			setup: func(t *testing.T, base string) (string, string, string, Options) {
				if err := os.Symlink("vol", filepath.Join(base, "link")); err != nil {
					t.Fatal(err)
				}
				return filepath.Join(base, "link"), base, "copy", Options{}
			},
			wantErr: unix.ENOTDIR, // O_DIRECTORY|O_NOFOLLOW on a symlink
		},
		{
			name: "source is a file",
			setup: func(t *testing.T, base string) (string, string, string, Options) {
				return filepath.Join(base, "vol", "f"), base, "copy", Options{}
			},
			wantErr: unix.ENOTDIR,
		},
		{
			name: "into an empty directory",
			setup: func(t *testing.T, base string) (string, string, string, Options) {
				mkdirAll(t, filepath.Join(base, "copy"))
				return filepath.Join(base, "vol"), base, "copy", Options{Into: true}
			},
			check: func(t *testing.T, base string, st Stats) {
				assertContent(t, filepath.Join(base, "copy", "f"), "f")
				if s := lstat(t, filepath.Join(base, "copy")); s.Mode&0o7777 != 0o710 {
					t.Errorf("root mode %o, want the source's 0710", s.Mode&0o7777)
				}
			},
		},
		{
			name: "into a directory that is not empty",
			setup: func(t *testing.T, base string) (string, string, string, Options) {
				writeFile(t, filepath.Join(base, "copy", "x"), "x")
				return filepath.Join(base, "vol"), base, "copy", Options{Into: true}
			},
			wantErr: unix.ENOTEMPTY,
		},
		{
			name: "destination inside the source",
			setup: func(t *testing.T, base string) (string, string, string, Options) {
				return filepath.Join(base, "vol"), filepath.Join(base, "vol"), "copy", Options{}
			},
			check: func(t *testing.T, base string, st Stats) {
				if st.Skipped != 1 {
					t.Errorf("Skipped = %d, want 1", st.Skipped)
				}
				assertContent(t, filepath.Join(base, "vol", "copy", "f"), "f")
				if _, err := os.Lstat(filepath.Join(base, "vol", "copy", "copy")); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("the copy was copied into itself: %v", err)
				}
			},
		},
		{
			name: "specials skipped",
			setup: func(t *testing.T, base string) (string, string, string, Options) {
				if err := unix.Mkfifo(filepath.Join(base, "vol", "fifo"), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := unix.Mknod(filepath.Join(base, "vol", "blk"), unix.S_IFBLK|0o600, int(unix.Mkdev(7, 200))); err != nil {
					t.Fatal(err)
				}
				return filepath.Join(base, "vol"), base, "copy", Options{Specials: Skip}
			},
			check: func(t *testing.T, base string, st Stats) {
				if st.Skipped != 2 || st.Specials != 0 {
					t.Errorf("stats %+v, want 2 skipped", st)
				}
				ents, _ := os.ReadDir(filepath.Join(base, "copy"))
				if len(ents) != 1 {
					t.Errorf("copy holds %d entries, want 1", len(ents))
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			writeFile(t, filepath.Join(base, "vol", "f"), "f")
			if err := os.Chmod(filepath.Join(base, "vol"), 0o710); err != nil {
				t.Fatal(err)
			}
			src, parent, name, o := tc.setup(t, base)
			st, err := within(t, treeTimeout, func() (Stats, error) {
				return Tree(context.Background(), src, parent, name, o)
			})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Tree = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Tree: %v", err)
			}
			if tc.check != nil {
				tc.check(t, base, st)
			}
		})
	}
}
