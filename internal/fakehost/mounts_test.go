package fakehost_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/berth-csi/berth/internal/fakehost"
	"github.com/berth-csi/berth/pkg/mounter"
	"github.com/berth-csi/berth/pkg/storage"
	"golang.org/x/sys/unix"
)

// dirs makes directories under a fresh temporary directory, resolved (the
// fake, like the kernel, shows paths without symlinks), and returns them.
func dirs(t *testing.T, names ...string) []string {
	t.Helper()
	base, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = filepath.Join(base, n)
		if err := os.MkdirAll(out[i], 0o750); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func newHost(t *testing.T) (*fakehost.Host, storage.Host) {
	fh := fakehost.New(filepath.Join(t.TempDir(), "dev"))
	return fh, fh.Host()
}

func mustMounted(t *testing.T, m storage.Mounter, path string, want bool) {
	t.Helper()
	got, err := m.IsMountPoint(path)
	if err != nil || got != want {
		t.Fatalf("IsMountPoint(%s) = %t, %v; want %t", path, got, err, want)
	}
}

func TestBindShowsTheSource(t *testing.T) {
	_, h := newHost(t)
	d := dirs(t, "pool/volumes/v1/data", "pool/volumes/v2/data", "kubelet/target")
	src, other, target := d[0], d[1], d[2]
	mustMounted(t, h.Mounts, target, false)
	if err := h.Mounts.Bind(src, target, mounter.Options{ReadOnly: true, Flags: unix.MS_NOEXEC}); err != nil {
		t.Fatal(err)
	}
	mustMounted(t, h.Mounts, target, true)
	m, err := h.Mounts.At(target)
	if err != nil || m == nil {
		t.Fatalf("At: %v, %v", m, err)
	}
	want := mounter.MountInfo{Root: src, Source: fakehost.HostFSType, FSType: fakehost.HostFSType,
		Mountpoint: target, ReadOnly: true, Options: "ro,nosuid,nodev,noexec"}
	if *m != want {
		t.Fatalf("At = %+v, want %+v", *m, want)
	}
	for path, want := range map[string]bool{src: true, src + "/": true, other: false} {
		if same, err := h.Mounts.SameSource(m, path); err != nil || same != want {
			t.Errorf("SameSource(%s) = %t, %v; want %t", path, same, err, want)
		}
	}
	// Locate says how binds of the pool's data directories show in All, as the
	// engine's recovery of dir pools reads them.
	major, minor, root, err := h.Mounts.Locate(filepath.Dir(filepath.Dir(src)))
	if err != nil || major != 0 || minor != 0 || root != filepath.Dir(filepath.Dir(src)) {
		t.Fatalf("Locate = %d:%d %s, %v", major, minor, root, err)
	}
	all, err := h.Mounts.All()
	if err != nil || len(all) != 1 || *all[0] != want {
		t.Fatalf("All = %v, %v", all, err)
	}
}

func TestUnmountRemovesTheTopMost(t *testing.T) {
	_, h := newHost(t)
	d := dirs(t, "a", "b", "target")
	for _, src := range d[:2] {
		if err := h.Mounts.Bind(src, d[2], mounter.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{d[1], d[0], ""} {
		m, err := h.Mounts.At(d[2])
		if err != nil || (m == nil) != (want == "") || m != nil && m.Root != want {
			t.Fatalf("At = %+v, %v; want root %q", m, err, want)
		}
		mustMounted(t, h.Mounts, d[2], want != "")
		if err := h.Mounts.Unmount(d[2]); err != nil {
			t.Fatalf("Unmount: %v", err) // nothing mounted is success too
		}
	}
}

func TestMountErrors(t *testing.T) {
	_, h := newHost(t)
	d := dirs(t, "src", "target")
	missing := filepath.Join(d[0], "missing")
	if _, err := h.Mounts.IsMountPoint(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("IsMountPoint(missing) = %v, want ErrNotExist", err)
	}
	if err := h.Mounts.Bind(missing, d[1], mounter.Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Bind(missing source) = %v, want ErrNotExist", err)
	}
	if err := h.Mounts.Bind(d[0], missing, mounter.Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Bind(missing target) = %v, want ErrNotExist", err)
	}
	if err := h.Mounts.BindBlock(d[0], d[1], mounter.Options{}); err == nil {
		t.Error("BindBlock of a directory succeeded")
	}
	if all, _ := h.Mounts.All(); len(all) != 0 {
		t.Errorf("failed binds left mounts: %v", all)
	}
}

// A bind resolves its source's symlinks, the magic links of /proc/self/fd
// included, as the kernel does: publish mounts adopted directories that way.
func TestBindResolvesTheSource(t *testing.T) {
	_, h := newHost(t)
	d := dirs(t, "real", "target1", "target2")
	link := filepath.Join(filepath.Dir(d[0]), "link")
	if err := os.Symlink(d[0], link); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(d[0], unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for target, src := range map[string]string{d[1]: link, d[2]: fmt.Sprintf("/proc/self/fd/%d", f.Fd())} {
		if err := h.Mounts.Bind(src, target, mounter.Options{}); err != nil {
			t.Fatal(err)
		}
		if m, _ := h.Mounts.At(target); m == nil || m.Root != d[0] {
			t.Errorf("bind of %s shows %+v, want root %s", src, m, d[0])
		}
	}
}

func TestKillMakesAFilesystemStale(t *testing.T) {
	fh, h := newHost(t)
	d := dirs(t, "pool", "staging", "target", "other", "othertarget")
	pool, staging, target := d[0], d[1], d[2]
	if err := fh.MountFS("server:/vol", pool, "glusterfs"); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(pool, "volumes/v1/data") // inside the fake filesystem: not on disk
	if err := h.Mounts.Bind(data, staging, mounter.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := h.Mounts.Bind(staging, target, mounter.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := h.Mounts.Bind(d[3], d[4], mounter.Options{}); err != nil {
		t.Fatal(err)
	}
	m, _ := h.Mounts.At(target)
	if same, err := h.Mounts.SameSource(m, data); err != nil || !same || m.Root != "/volumes/v1/data" || m.FSType != "glusterfs" {
		t.Fatalf("target shows %+v (same as data: %t, %v)", m, same, err)
	}
	if err := fh.Kill(pool); err != nil {
		t.Fatal(err)
	}
	for path, atMount := range map[string]bool{pool: true, staging: true, target: true, filepath.Join(target, "x"): false} {
		mounted, err := h.Mounts.IsMountPoint(path)
		if !errors.Is(err, mounter.ErrStale) || !errors.Is(err, unix.ENOTCONN) || mounted != atMount {
			t.Errorf("IsMountPoint(%s) = %t, %v; want %t, ErrStale", path, mounted, err, atMount)
		}
	}
	mustMounted(t, h.Mounts, d[4], true) // another filesystem's bind lives on
	if err := h.Mounts.Bind(staging, d[3], mounter.Options{}); !errors.Is(err, unix.ENOTCONN) {
		t.Errorf("Bind from a dead mount = %v, want ENOTCONN", err)
	}
	if err := h.Mounts.Unmount(target); err != nil {
		t.Fatal(err)
	}
	mustMounted(t, h.Mounts, target, false)
}

// Unmounting a mount takes the mounts made on top of it along, as a lazy unmount.
func TestUnmountTakesSubmounts(t *testing.T) {
	_, h := newHost(t)
	d := dirs(t, "src", "parent", "parent/child")
	for _, target := range d[1:] {
		if err := h.Mounts.Bind(d[0], target, mounter.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.Mounts.Unmount(d[1]); err != nil {
		t.Fatal(err)
	}
	if all, _ := h.Mounts.All(); len(all) != 0 {
		t.Fatalf("left %v", all)
	}
}

func TestConcurrentMounts(t *testing.T) {
	_, h := newHost(t)
	d := dirs(t, "src")
	var wg sync.WaitGroup
	for i := range 16 {
		target := dirs(t, fmt.Sprint("t", i))[0]
		wg.Go(func() {
			for range 20 {
				if err := h.Mounts.Bind(d[0], target, mounter.Options{}); err != nil {
					t.Error(err)
				}
				if _, err := h.Mounts.All(); err != nil {
					t.Error(err)
				}
				if err := h.Mounts.Unmount(target); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if all, _ := h.Mounts.All(); len(all) != 0 {
		t.Fatalf("left %d mounts", len(all))
	}
}
