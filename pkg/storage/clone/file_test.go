package clone

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"golang.org/x/sys/unix"
)

// makeImage writes a sparse image: 1 GiB apparent, 1 MiB of data at 512 MiB.
func makeImage(t *testing.T, path string) []byte {
	t.Helper()
	data := make([]byte, 1<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, 512<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return data
}

func TestFile(t *testing.T) {
	for _, tfs := range allFS {
		t.Run(tfs.name, func(t *testing.T) {
			mnt := mountFS(t, tfs, 512<<20)
			src, dst := filepath.Join(mnt, "image"), filepath.Join(mnt, "copy")
			data := makeImage(t, src)
			if err := os.Chown(src, testUID, testGID); err != nil {
				t.Fatal(err)
			}
			setXattr(t, src, "user.kind", "image")
			ts := []unix.Timespec{{Sec: 1e9, Nsec: 1}, {Sec: 1e9 + 1, Nsec: 999_999_999}}
			if err := unix.UtimesNano(src, ts); err != nil {
				t.Fatal(err)
			}
			want := lstat(t, src)

			st, err := File(context.Background(), src, dst, Options{})
			if err != nil {
				t.Fatalf("File: %v", err)
			}
			if st.Reflinked != tfs.reflink || st.Files != 1 {
				t.Errorf("stats %+v, want Reflinked %v", st, tfs.reflink)
			}
			if !tfs.reflink && st.BytesCopied != int64(len(data)) {
				t.Errorf("copied %d bytes, want %d (the data only)", st.BytesCopied, len(data))
			}
			got := lstat(t, dst)
			if got.Mode != want.Mode || got.Uid != want.Uid || got.Gid != want.Gid || got.Size != want.Size ||
				got.Atim != want.Atim || got.Mtim != want.Mtim {
				t.Errorf("copy %+v, want %+v", got, want)
			}
			if got.Blocks*512 > 4<<20 {
				t.Errorf("copy allocates %d bytes: holes filled", got.Blocks*512)
			}
			if x := xattrs(t, dst); x["user.kind"] != "image" {
				t.Errorf("xattrs %q", x)
			}
			if !bytes.Equal(readAt(t, dst, 512<<20, len(data)), data) {
				t.Errorf("data differs")
			}
			if off := seek(t, dst, 0, unix.SEEK_DATA); off != 512<<20 {
				t.Errorf("first data at %d, want %d", off, 512<<20)
			}

			if _, err := File(context.Background(), src, dst, Options{}); !errors.Is(err, os.ErrExist) {
				t.Errorf("File onto an existing file = %v, want ErrExist", err)
			}
			_, err = File(context.Background(), src, filepath.Join(mnt, "always"), Options{Reflink: Always})
			if tfs.reflink && err != nil {
				t.Errorf("File(Always): %v", err)
			}
			if !tfs.reflink && !errors.Is(err, ErrNoReflink) {
				t.Errorf("File(Always) = %v, want ErrNoReflink", err)
			}
		})
	}
}

// File refuses anything but a regular file, without opening it: a fifo
// would block, a symlink could lead anywhere.
func TestFileNotRegular(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "target"), "host data")
	if err := os.Symlink(filepath.Join(dir, "target"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	mkdirAll(t, filepath.Join(dir, "dir"))
	for _, name := range []string{"link", "fifo", "null", "dir"} {
		t.Run(name, func(t *testing.T) {
			dst := filepath.Join(dir, name+".copy")
			_, err := within(t, treeTimeout, func() (Stats, error) {
				return File(context.Background(), filepath.Join(dir, name), dst, Options{})
			})
			if !errors.Is(err, ErrNotRegular) {
				t.Fatalf("File(%s) = %v, want ErrNotRegular", name, err)
			}
			if _, err := os.Lstat(dst); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("destination made: %v", err)
			}
		})
	}
}

func TestReflinkSupported(t *testing.T) {
	for _, tfs := range allFS {
		t.Run(tfs.name, func(t *testing.T) {
			mnt := mountFS(t, tfs, 512<<20)
			dir := filepath.Join(mnt, "tmp")
			mkdirAll(t, dir)
			if got := ReflinkSupported(dir); got != tfs.reflink {
				t.Errorf("ReflinkSupported = %v, want %v", got, tfs.reflink)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Errorf("probe left %d entries", len(ents))
			}
		})
	}
	if ReflinkSupported(filepath.Join(t.TempDir(), "missing")) {
		t.Errorf("ReflinkSupported(missing dir) = true")
	}
}
