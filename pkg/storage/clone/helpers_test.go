package clone

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
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

var (
	mkdirAll      = testutil.MkdirAll
	writeFile     = testutil.WriteFile
	writeRandom   = testutil.WriteRandom
	sha256File    = testutil.SHA256File
	lstat         = testutil.Lstat
	assertContent = testutil.AssertContent
	xattrs        = testutil.Xattrs
	setXattr      = testutil.SetXattr
	seek          = testutil.Seek
	readAt        = testutil.ReadAt
)

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
