package loop_test

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"testing"

	"github.com/berth-csi/berth/pkg/storage/loop"
	"golang.org/x/sys/unix"
)

// TestDetachRefusesExclusiveHolder: a device held exclusively, as a mounted
// filesystem holds it, is not detached (the kernel would only schedule it).
func TestDetachRefusesExclusiveHolder(t *testing.T) {
	dir := poolDir(t)
	img := newImage(t, dir, "held.img", 8*mib)
	d := mustAttach(t, img, false)

	fd, err := unix.Open(d.Path, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = loop.Detach(d)
	unix.Close(fd)
	if !errors.Is(err, loop.ErrBusy) || !errors.Is(err, unix.EBUSY) {
		t.Errorf("Detach of a held device = %v, want ErrBusy wrapping EBUSY", err)
	}
	if found, err := loop.Find(img); err != nil || found == nil || found.AutoClear {
		t.Errorf("Find after refused Detach = %+v, %v, want attached, no autoclear", found, err)
	}
	if err := loop.Detach(d); err != nil {
		t.Errorf("Detach once released: %v", err)
	}
}

// TestDetachRefusesMounted: the real case of an exclusive holder, a mounted
// filesystem: Detach refuses, and succeeds once it is unmounted.
func TestDetachRefusesMounted(t *testing.T) {
	dir := poolDir(t)
	img := newImage(t, dir, "fs.img", 64*mib)
	d := mustAttach(t, img, false)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", d.Path).CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4 %s: %v: %s", d.Path, err, out)
	}
	mnt := t.TempDir()
	if err := unix.Mount(d.Path, mnt, "ext4", 0, ""); err != nil {
		t.Fatalf("mount %s: %v", d.Path, err)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			if err := unix.Unmount(mnt, 0); err != nil {
				t.Errorf("unmount %s: %v", mnt, err)
			}
		}
	})

	if err := loop.Detach(d); !errors.Is(err, loop.ErrBusy) {
		t.Errorf("Detach while mounted = %v, want ErrBusy", err)
	}
	if err := loop.DetachFile(img); !errors.Is(err, loop.ErrBusy) {
		t.Errorf("DetachFile while mounted = %v, want ErrBusy", err)
	}
	if found, err := loop.Find(img); err != nil || found == nil || found.AutoClear {
		t.Errorf("Find after refused detaches = %+v, %v, want attached, no autoclear", found, err)
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
	if err := loop.DetachFile(img); err != nil {
		t.Errorf("DetachFile once unmounted: %v", err)
	}
}

// TestDetachFileHeldOpen: a device merely held open is detached by the kernel
// at the last close; DetachFile reports it still attached, and Attach refuses
// to reuse the departing device.
func TestDetachFileHeldOpen(t *testing.T) {
	dir := poolDir(t)
	img := newImage(t, dir, "open.img", 8*mib)
	d := mustAttach(t, img, false)

	holder, err := os.Open(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := loop.DetachFile(img); !errors.Is(err, loop.ErrBusy) {
		t.Errorf("DetachFile while held open = %v, want ErrBusy", err)
	}
	found, err := loop.Find(img)
	if err != nil || found == nil || !found.AutoClear {
		t.Fatalf("Find while held open = %+v, %v, want attached with AutoClear", found, err)
	}
	if _, err := loop.Attach(img, false); !errors.Is(err, loop.ErrBusy) {
		t.Errorf("Attach while detach pending = %v, want ErrBusy", err)
	}
	holder.Close()
	if found, err := loop.Find(img); err != nil || found != nil {
		t.Errorf("Find after last close = %+v, %v, want nil, nil", found, err)
	}
}

// TestDetachStaleDevice: detaching a device record whose number now serves
// another file leaves that file attached.
func TestDetachStaleDevice(t *testing.T) {
	dir := poolDir(t)
	first := mustAttach(t, newImage(t, dir, "first.img", 8*mib), false)
	if err := loop.Detach(first); err != nil {
		t.Fatal(err)
	}
	second := mustAttach(t, newImage(t, dir, "second.img", 8*mib), false)
	if second.Number != first.Number {
		t.Skipf("the kernel gave %s, not the freed %s (another test took it)", second.Path, first.Path)
	}
	if err := loop.Detach(first); err != nil {
		t.Errorf("Detach(stale) = %v, want nil", err)
	}
	if found, err := loop.Find(second.BackingFile); err != nil || found == nil {
		t.Errorf("Find(second) after Detach(stale) = %+v, %v, want still attached", found, err)
	}
}

// TestUnlinkedImage: an image deleted while attached keeps its device; List
// still reports it, under its old name marked by the kernel, and Detach ends it.
func TestUnlinkedImage(t *testing.T) {
	dir := poolDir(t)
	img := newImage(t, dir, "gone.img", 8*mib)
	d := mustAttach(t, img, false)
	if err := os.Remove(img); err != nil {
		t.Fatal(err)
	}
	list, err := loop.List(dir)
	if err != nil || len(list) != 1 || list[0].Number != d.Number || list[0].BackingFile != img+" (deleted)" {
		t.Fatalf("List after unlink = %v, %v, want [%s -> %s (deleted)]", list, err, d.Path, img)
	}
	if _, err := loop.Find(img); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Find(unlinked) = %v, want ErrNotExist", err)
	}
	if err := loop.Detach(list[0]); err != nil {
		t.Errorf("Detach: %v", err)
	}
}
