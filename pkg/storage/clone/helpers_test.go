package clone

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"golang.org/x/sys/unix"
)

// testFS says how to make one test filesystem on a loop file.
type testFS struct {
	name    string
	mkfs    []string // command and flags; the image path is appended
	reflink bool     // FICLONE works on it
}

var (
	xfsReflink = testFS{"xfs-reflink", []string{"mkfs.xfs", "-q", "-f", "-m", "reflink=1"}, true}
	btrfsFS    = testFS{"btrfs", []string{"mkfs.btrfs", "-q", "-f"}, true}
	ext4FS     = testFS{"ext4", []string{"mkfs.ext4", "-q", "-F"}, false}
	allFS      = []testFS{xfsReflink, btrfsFS, ext4FS}
)

// mountFS makes fs on a sparse loop file of size bytes in t.TempDir() and
// mounts it (mount -o loop, so the loop device goes with the mount); it
// returns the mount point. A filesystem whose mkfs is not installed skips the
// test. Cleanup unmounts, even when the test failed, and fails the test if a
// loop device is still attached to the file afterwards.
func mountFS(t testing.TB, fs testFS, size int64) string {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := exec.LookPath(fs.mkfs[0]); err != nil {
		t.Skipf("%s not installed: %v", fs.mkfs[0], err)
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, append(fs.mkfs, img)...)
	testutil.Run(t, "mount", "-o", "loop", img, mnt)
	t.Cleanup(func() {
		testutil.UnmountTree(t, mnt)
		var out []byte
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			var err error
			if out, err = exec.Command("losetup", "-j", img).CombinedOutput(); err != nil {
				t.Errorf("losetup -j %s: %v: %s", img, err, out)
				return
			}
			if len(bytes.TrimSpace(out)) == 0 {
				return
			}
		}
		t.Errorf("loop device still attached after unmount: %s", out)
	})
	return mnt
}

// within runs f and fails the test if it has not returned after d, so a copy
// that blocks (opening a fifo, say) fails instead of hanging the suite.
func within[T any](t testing.TB, d time.Duration, f func() (T, error)) (T, error) {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := f()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-time.After(d):
		t.Fatalf("still running after %v", d)
		var zero T
		return zero, nil
	}
}

func mkdirAll(t testing.TB, path string) {
	t.Helper()
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	mkdirAll(t, filepath.Dir(path))
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeRandom writes size random bytes to path and returns their sha256.
func writeRandom(t testing.TB, path string, size int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func sha256File(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func lstat(t testing.TB, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func assertContent(t testing.TB, path, want string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s = %q, want %q", path, got, want)
	}
}

// xattrs returns the extended attributes of path itself (not of a symlink's
// target), name to value.
func xattrs(t testing.TB, path string) map[string]string {
	t.Helper()
	n, err := unix.Llistxattr(path, nil)
	if err != nil {
		t.Fatalf("llistxattr %s: %v", path, err)
	}
	buf := make([]byte, n)
	if n, err = unix.Llistxattr(path, buf); err != nil {
		t.Fatalf("llistxattr %s: %v", path, err)
	}
	m := make(map[string]string)
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		sz, err := unix.Lgetxattr(path, name, nil)
		if err != nil {
			t.Fatalf("lgetxattr %s %s: %v", path, name, err)
		}
		val := make([]byte, sz)
		if sz, err = unix.Lgetxattr(path, name, val); err != nil {
			t.Fatalf("lgetxattr %s %s: %v", path, name, err)
		}
		m[name] = string(val[:sz])
	}
	return m
}

func setXattr(t testing.TB, path, name, value string) {
	t.Helper()
	if err := unix.Lsetxattr(path, name, []byte(value), 0); err != nil {
		t.Fatalf("lsetxattr %s %s: %v", path, name, err)
	}
}

// openFDs counts this process's open fds.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// withFileLimit lowers the soft RLIMIT_NOFILE to n for the rest of the test.
func withFileLimit(t testing.TB, n uint64) {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = n
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
			t.Errorf("restore RLIMIT_NOFILE: %v", err)
		}
	})
}

// seek returns lseek(path, off, whence) (SEEK_DATA or SEEK_HOLE); -1 for ENXIO.
func seek(t testing.TB, path string, off int64, whence int) int64 {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	pos, err := unix.Seek(fd, off, whence)
	if err == unix.ENXIO {
		return -1
	}
	if err != nil {
		t.Fatalf("seek %s %d: %v", path, off, err)
	}
	return pos
}

// readAt reads n bytes of path at off.
func readAt(t testing.TB, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil {
		t.Fatalf("read %s at %d: %v", path, off, err)
	}
	return buf
}
