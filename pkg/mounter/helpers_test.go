package mounter

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// detachOnCleanup lazily unmounts everything stacked at target when the test
// ends, pass or fail. Call it after the t.TempDir that holds target, so it
// runs before that directory is removed.
func detachOnCleanup(t testing.TB, target string) {
	t.Helper()
	t.Cleanup(func() {
		for range 16 {
			if err := unix.Unmount(target, unix.MNT_DETACH); err != nil {
				return
			}
		}
	})
}

// mkdirs creates each directory under root and returns their paths.
func mkdirs(t testing.TB, root string, names ...string) []string {
	t.Helper()
	var paths []string
	for _, n := range names {
		p := filepath.Join(root, n)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

// mountTmpfs mounts a fresh tmpfs at dir/name with flags and returns its path.
func mountTmpfs(t testing.TB, dir, name string, flags uintptr) string {
	t.Helper()
	p := mkdirs(t, dir, name)[0]
	detachOnCleanup(t, p)
	if err := unix.Mount("tmpfs", p, "tmpfs", flags, "size=16m"); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", p, err)
	}
	return p
}

// mustBind binds source on target and registers the cleanup.
func mustBind(t testing.TB, source, target string, o Options) {
	t.Helper()
	detachOnCleanup(t, target)
	if err := Bind(source, target, o); err != nil {
		t.Fatalf("Bind(%s, %s, %+v): %v", source, target, o, err)
	}
}

// mustAt returns the mount at target, failing if there is none.
func mustAt(t testing.TB, target string) *MountInfo {
	t.Helper()
	m, err := At(target)
	if err != nil {
		t.Fatalf("At(%s): %v", target, err)
	}
	if m == nil {
		t.Fatalf("At(%s) = nil, want a mount", target)
	}
	return m
}

// checkOptions asserts which per-mount options the mount at target has.
func checkOptions(t testing.TB, target string, want, unwanted []string) {
	t.Helper()
	m := mustAt(t, target)
	opts := strings.Split(m.Options, ",")
	for _, o := range want {
		if !slices.Contains(opts, o) {
			t.Errorf("mount at %s has options %q, want %q among them", target, m.Options, o)
		}
	}
	for _, o := range unwanted {
		if slices.Contains(opts, o) {
			t.Errorf("mount at %s has options %q, want no %q", target, m.Options, o)
		}
	}
}

// attachLoop creates a sparse file of size bytes and attaches it to a loop
// device, detached when the test ends. losetup runs only in tests: the
// package itself never starts a process.
func attachLoop(t testing.TB, size int64) string {
	t.Helper()
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("needs loop devices: %v", err)
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup --find --show %s: %v: %s", img, err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev
}
