package loop_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage/loop"
	"golang.org/x/sys/unix"
)

const mib = int64(1) << 20

// requireLoop skips (or, in CI, fails) a test that needs root and loop devices.
func requireLoop(t testing.TB) {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("needs loop devices: %v", err)
	}
}

// poolDir returns a fresh directory for image files. Its first cleanup, which
// runs after every other one the test registers, asserts that no loop device
// is left backed by a file under it, and detaches any it finds, so a failed
// test does not leak devices into later runs.
func poolDir(t testing.TB) string {
	t.Helper()
	requireLoop(t)
	dir := t.TempDir()
	t.Cleanup(func() { assertNoneLeft(t, dir) })
	return dir
}

// assertNoneLeft fails the test if a loop device is backed by a file under
// dir, after a short grace for detaches the kernel completes at last close.
func assertNoneLeft(t testing.TB, dir string) {
	t.Helper()
	var left []*loop.Device
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var err error
		if left, err = loop.List(dir); err != nil {
			t.Errorf("List(%s) at cleanup: %v", dir, err)
			return
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, d := range left {
		t.Errorf("loop device left attached: %s -> %s", d.Path, d.BackingFile)
		if err := loop.Detach(d); err != nil {
			t.Errorf("force detach %s: %v", d.Path, err)
		}
	}
}

// newImage creates a sparse file of size bytes called name in dir.
func newImage(t testing.TB, dir, name string, size int64) string {
	t.Helper()
	path := filepath.Join(dir, name)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// mustAttach attaches file, detached at cleanup.
func mustAttach(t testing.TB, file string, readOnly bool) *loop.Device {
	t.Helper()
	d, err := loop.Attach(file, readOnly)
	if err != nil {
		t.Fatalf("Attach(%q, %t): %v", file, readOnly, err)
	}
	detachAtCleanup(t, d)
	return d
}

// detachAtCleanup detaches d when the test ends (a no-op if already done).
func detachAtCleanup(t testing.TB, d *loop.Device) {
	t.Helper()
	t.Cleanup(func() {
		if err := loop.Detach(d); err != nil {
			t.Errorf("Detach(%s) at cleanup: %v", d.Path, err)
		}
	})
}

// stat returns the (st_dev, st_ino) of path.
func stat(t testing.TB, path string) (dev, ino uint64) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return uint64(st.Dev), uint64(st.Ino)
}

// losetupJ returns the devices losetup -j reports for file; only tests start
// processes, to cross-check the package against util-linux.
func losetupJ(t testing.TB, file string) []string {
	t.Helper()
	out, err := exec.Command("losetup", "-j", file).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup -j %s: %v: %s", file, err, out)
	}
	var devs []string
	for _, line := range strings.Split(string(out), "\n") {
		if dev, _, ok := strings.Cut(line, ": "); ok && strings.HasPrefix(dev, "/dev/loop") {
			devs = append(devs, dev)
		}
	}
	return devs
}

// losetupAttach attaches file with losetup, as another program (or an earlier
// driver) would have, and returns the device path; detached at cleanup.
func losetupAttach(t testing.TB, file string) string {
	t.Helper()
	out, err := exec.Command("losetup", "--find", "--show", file).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup --find --show %s: %v: %s", file, err, out)
	}
	dev := strings.TrimSpace(string(out))
	n, err := strconv.Atoi(strings.TrimPrefix(dev, "/dev/loop"))
	if err != nil {
		t.Fatalf("losetup printed %q", out)
	}
	// Detach with the package, which checks the device is still backed by
	// file: the number may have been reused once the test detached it.
	fdev, ino := stat(t, file)
	detachAtCleanup(t, &loop.Device{Path: dev, Number: n, Dev: fdev, Inode: ino})
	return dev
}

// readSys reads a sysfs attribute of device d, without its newline.
func readSys(t testing.TB, d *loop.Device, attr string) string {
	t.Helper()
	b, err := os.ReadFile("/sys/block/" + filepath.Base(d.Path) + "/" + attr)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(string(b), "\n")
}
