package fakehost_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/fakehost"
	"github.com/berth-csi/berth/pkg/mounter"
	"github.com/berth-csi/berth/pkg/storage/loop"
	"golang.org/x/sys/unix"
)

// image makes a file of size bytes at dir/name and returns its path.
func image(t *testing.T, dir, name string, size int64) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoopDevices(t *testing.T) {
	fh, h := newHost(t)
	d := dirs(t, "pool/volumes/a", "pool/volumes/b", "elsewhere")
	a, b, c := image(t, d[0], "image", 1<<20), image(t, d[1], "image", 2<<20), image(t, d[2], "image", 1<<20)
	var devs []*loop.Device
	for _, f := range []string{a, b, c} {
		dev, err := h.Loops.Attach(f, loop.Options{DirectIO: true})
		if err != nil {
			t.Fatal(err)
		}
		devs = append(devs, dev)
	}
	for i, dev := range devs {
		major, minor, err := h.Loops.DevNumber(dev)
		if err != nil || major != fakehost.LoopMajor || minor != i || dev.Number != i || !dev.DirectIO {
			t.Errorf("device %d: %+v is %d:%d (%v)", i, dev, major, minor, err)
		}
	}
	if again, err := h.Loops.Attach(a, loop.Options{}); err != nil || *again != *devs[0] {
		t.Errorf("attach again = %+v, %v; want %+v", again, err, devs[0])
	}
	if _, err := h.Loops.Attach(a, loop.Options{ReadOnly: true}); !errors.Is(err, loop.ErrMismatch) {
		t.Errorf("attach read-only = %v, want ErrMismatch", err)
	}
	list, err := h.Loops.List(filepath.Join(filepath.Dir(d[0])))
	if err != nil || len(list) != 2 || *list[0] != *devs[0] || *list[1] != *devs[1] {
		t.Errorf("List = %v, %v", list, err)
	}
	if found, err := h.Loops.Find(b); err != nil || found == nil || *found != *devs[1] {
		t.Errorf("Find = %+v, %v", found, err)
	}
	if err := h.Loops.Detach(devs[0]); err != nil {
		t.Fatal(err)
	}
	if found, err := h.Loops.Find(a); err != nil || found != nil {
		t.Errorf("Find after Detach = %+v, %v", found, err)
	}
	if err := h.Loops.Detach(devs[0]); err != nil {
		t.Errorf("second Detach = %v", err)
	}
	// The lowest free number is taken, as LOOP_CTL_GET_FREE does.
	if dev, err := h.Loops.Attach(a, loop.Options{}); err != nil || dev.Number != 0 {
		t.Errorf("reattach = %+v, %v", dev, err)
	}
	if err := h.Loops.DetachFile(b); err != nil {
		t.Fatal(err)
	}
	if got := len(fh.Devices()); got != 2 {
		t.Errorf("%d devices left, want 2", got)
	}
}

func TestLoopErrors(t *testing.T) {
	_, h := newHost(t)
	d := dirs(t, "v")
	link := filepath.Join(d[0], "link")
	if err := os.Symlink(image(t, d[0], "image", 4096), link); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(string) error{
		"Attach":     func(p string) error { _, err := h.Loops.Attach(p, loop.Options{}); return err },
		"Find":       func(p string) error { _, err := h.Loops.Find(p); return err },
		"DetachFile": h.Loops.DetachFile,
	} {
		if err := f(filepath.Join(d[0], "missing")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s(missing) = %v, want ErrNotExist", name, err)
		}
		if err := f(link); !errors.Is(err, loop.ErrNotRegular) {
			t.Errorf("%s(symlink) = %v, want ErrNotRegular", name, err)
		}
	}
}

// A device keeps its size until SetCapacity; its filesystem until GrowFS.
func TestGrowth(t *testing.T) {
	fh, h := newHost(t)
	d := dirs(t, "v", "staging", "target")
	img := image(t, d[0], "image", 1<<20)
	dev, err := h.Loops.Attach(img, loop.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Mounts.FormatAndMount(dev.Path, d[1], "xfs", nil); err != nil {
		t.Fatal(err)
	}
	m, _ := h.Mounts.At(d[1])
	if m == nil || m.Major != fakehost.LoopMajor || m.Minor != dev.Number || m.Root != "/" || m.Source != dev.Path || m.FSType != "xfs" {
		t.Fatalf("staging shows %+v", m)
	}
	if err := os.Truncate(img, 3<<20); err != nil {
		t.Fatal(err)
	}
	sizes := func() (int64, int64) {
		n, err := h.Loops.Size(dev.Path)
		if err != nil {
			t.Fatal(err)
		}
		fs, _ := fh.Filesystem(img)
		return n, fs.Size
	}
	for _, step := range []struct {
		name         string
		do           func() error
		dev, fsBytes int64
	}{
		{"file grown", func() error { return nil }, 1 << 20, 1 << 20},
		{"SetCapacity", func() error { return h.Loops.SetCapacity(dev) }, 3 << 20, 1 << 20},
		{"GrowFS", func() error { return h.Mounts.GrowFS(dev.Path, d[1]) }, 3 << 20, 3 << 20},
	} {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if n, fs := sizes(); n != step.dev || fs != step.fsBytes {
			t.Errorf("after %s: device %d, filesystem %d; want %d, %d", step.name, n, fs, step.dev, step.fsBytes)
		}
	}
	if err := h.Mounts.FormatAndMount(dev.Path, d[2], "ext4", nil); err == nil {
		t.Error("mounting xfs as ext4 succeeded")
	}
	if err := h.Loops.DetachFile(img); !errors.Is(err, loop.ErrBusy) {
		t.Errorf("detach while mounted = %v, want ErrBusy", err)
	}
	if err := h.Mounts.GrowExt4Offline(dev.Path); err != nil {
		t.Errorf("GrowExt4Offline of xfs = %v, want nothing done", err)
	}
	if got := len(fh.Calls("GrowFS")); got != 1 {
		t.Errorf("%d GrowFS calls recorded, want 1", got)
	}
}

// A block volume: the device bound on a file, measured there.
func TestBindBlock(t *testing.T) {
	_, h := newHost(t)
	d := dirs(t, "v", "pod")
	dev, err := h.Loops.Attach(image(t, d[0], "image", 1<<20), loop.Options{})
	if err != nil {
		t.Fatal(err)
	}
	target := image(t, d[1], "block", 0)
	if err := h.Mounts.BindBlock(dev.Path, target, mounter.Options{}); err != nil {
		t.Fatal(err)
	}
	m, _ := h.Mounts.At(target)
	if m == nil || m.FSType != "devtmpfs" || m.Root != "/"+filepath.Base(dev.Path) || m.Options != "rw,nosuid" {
		t.Fatalf("target shows %+v", m)
	}
	if same, err := h.Mounts.SameSource(m, dev.Path); err != nil || !same {
		t.Errorf("SameSource(device) = %t, %v", same, err)
	}
	if n, err := h.Loops.Size(target); err != nil || n != 1<<20 {
		t.Errorf("Size(target) = %d, %v", n, err)
	}
	if _, err := h.Loops.Size(d[0]); !errors.Is(err, unix.ENOTTY) {
		t.Errorf("Size(directory) = %v, want ENOTTY", err)
	}
}

// A hook can fail a call, which then changes nothing, or hold one while others go on.
func TestHooks(t *testing.T) {
	fh, h := newHost(t)
	d := dirs(t, "a", "b", "ta", "tb")
	refused := errors.New("refused")
	entered, release := make(chan struct{}), make(chan struct{})
	fh.SetHooks(fakehost.Hooks{
		Bind: func(source, _ string) error {
			switch source {
			case d[0]:
				close(entered)
				<-release
			case d[1]:
				return refused
			}
			return nil
		},
		Run: func(name string, args ...string) ([]byte, error) { return []byte(name + " ran"), nil },
	})
	done := make(chan error)
	go func() { done <- h.Mounts.Bind(d[0], d[2], mounter.Options{}) }()
	<-entered
	if err := h.Mounts.Bind(d[1], d[3], mounter.Options{}); !errors.Is(err, refused) {
		t.Errorf("Bind = %v, want the hook's error", err)
	}
	mustMounted(t, h.Mounts, d[3], false)
	mustMounted(t, h.Mounts, d[2], false) // still held in its hook
	close(release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("held Bind did not finish")
	}
	mustMounted(t, h.Mounts, d[2], true)
	out, err := h.Run(t.Context(), "gluster", "volume", "get")
	if err != nil || string(out) != "gluster ran" {
		t.Errorf("Run = %q, %v", out, err)
	}
	var ops []string
	for _, c := range fh.Calls("") {
		ops = append(ops, c.Op)
	}
	if want := []string{"Bind", "Bind", "Run"}; !slices.Equal(ops, want) {
		t.Errorf("calls %v, want %v", ops, want)
	}
}
