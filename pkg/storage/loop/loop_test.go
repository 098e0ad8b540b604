package loop_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage/loop"
	"golang.org/x/sys/unix"
)

// TestAttachLifecycle follows a volume: stage (attach), restage (same device),
// a restarted driver finding it, unstage (detach), unstage again.
func TestAttachLifecycle(t *testing.T) {
	dir := poolDir(t)
	img := newImage(t, dir, "vol.img", 64*mib)
	fdev, ino := stat(t, img)

	d := mustAttach(t, img, false)
	want := &loop.Device{Path: d.Path, Number: d.Number, BackingFile: img, Inode: ino, Dev: fdev}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("Attach = %+v, want %+v", d, want)
	}
	var st unix.Stat_t
	if err := unix.Stat(d.Path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK || unix.Major(uint64(st.Rdev)) != 7 {
		t.Fatalf("%s: mode %#o rdev %d:%d, want a loop block device", d.Path, st.Mode,
			unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev)))
	}
	if got, err := loop.Size(d.Path); err != nil || got != 64*mib {
		t.Fatalf("Size(%s) = %d, %v, want %d", d.Path, got, err, 64*mib)
	}

	// Data written to the device lands in the file.
	data := bytes.Repeat([]byte("berth-loop!"), 1000)
	dw, err := os.OpenFile(d.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dw.WriteAt(data, 5*mib); err != nil {
		t.Fatal(err)
	}
	if err := dw.Sync(); err != nil { // flush the device's page cache to the loop driver
		t.Fatal(err)
	}
	if err := dw.Close(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ReadAt(got, 5*mib)
	f.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("file at 5 MiB after a write to %s: %q..., %v", d.Path, got[:16], err)
	}

	// Stage again: the same device, nothing new.
	again, err := loop.Attach(img, false)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(again, d) {
		t.Errorf("second Attach = %+v, want %+v", again, d)
	}
	// A restarted driver keeps no cache: Find asks the kernel.
	if found, err := loop.Find(img); err != nil || !reflect.DeepEqual(found, d) {
		t.Errorf("Find = %+v, %v, want %+v", found, err, d)
	}
	if list, err := loop.List(dir); err != nil || len(list) != 1 || !reflect.DeepEqual(list[0], d) {
		t.Errorf("List = %v, %v, want [%+v]", list, err, d)
	}
	if devs := losetupJ(t, img); len(devs) != 1 || devs[0] != d.Path {
		t.Errorf("losetup -j %s = %v, want [%s]", img, devs, d.Path)
	}

	// Unstage, twice.
	if err := loop.Detach(d); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	if found, err := loop.Find(img); err != nil || found != nil {
		t.Errorf("Find after Detach = %+v, %v, want nil, nil", found, err)
	}
	if err := loop.Detach(d); err != nil {
		t.Errorf("second Detach: %v", err)
	}
	if err := loop.DetachFile(img); err != nil {
		t.Errorf("DetachFile of a detached file: %v", err)
	}
	if devs := losetupJ(t, img); len(devs) != 0 {
		t.Errorf("losetup -j %s after Detach = %v, want none", img, devs)
	}
}

// TestAttachReadOnly: a read-only attachment refuses writes, and a read-write
// request for the same file is refused rather than served read-only.
func TestAttachReadOnly(t *testing.T) {
	dir := poolDir(t)
	img := newImage(t, dir, "ro.img", 64*mib)
	data := []byte("written before attach")
	if err := os.WriteFile(img, data, 0); err != nil { // also truncates: size below
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64*mib); err != nil {
		t.Fatal(err)
	}

	d := mustAttach(t, img, true)
	if !d.ReadOnly {
		t.Errorf("Attach(ro) = %+v, want ReadOnly", d)
	}
	if ro := readSys(t, d, "ro"); ro != "1" {
		t.Errorf("sysfs ro = %q, want 1", ro)
	}
	// The kernel lets the device be opened for writing; the write fails.
	w, err := os.OpenFile(d.Path, os.O_WRONLY, 0)
	if err == nil {
		_, err = w.WriteAt([]byte("overwrite"), 0)
		if serr := w.Sync(); err == nil {
			err = serr
		}
		w.Close()
	}
	if !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EROFS) && !errors.Is(err, unix.EACCES) {
		t.Errorf("write to %s = %v, want EPERM, EROFS or EACCES", d.Path, err)
	}
	got := make([]byte, len(data))
	f, err := os.Open(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ReadAt(got, 0)
	f.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("read %s = %q, %v, want %q", d.Path, got, err, data)
	}

	if again, err := loop.Attach(img, true); err != nil || again.Number != d.Number {
		t.Errorf("second Attach(ro) = %+v, %v, want %s", again, err, d.Path)
	}
	if rw, err := loop.Attach(img, false); !errors.Is(err, loop.ErrMismatch) {
		t.Errorf("Attach(rw) of a read-only attachment = %+v, %v, want ErrMismatch", rw, err)
	}
}

// TestAttachConcurrentSameFile: goroutines staging one volume at once make one
// device.
func TestAttachConcurrentSameFile(t *testing.T) {
	dir := poolDir(t)
	img := newImage(t, dir, "same.img", 64*mib)
	devs := attachAll(t, []string{img, img, img, img, img, img, img, img})
	for i, d := range devs {
		if d == nil || devs[0] == nil || d.Number != devs[0].Number {
			t.Errorf("attach %d = %+v, want %+v", i, d, devs[0])
		}
	}
	if list, err := loop.List(dir); err != nil || len(list) != 1 {
		t.Errorf("List = %v, %v, want one device", list, err)
	}
}

// TestAttachConcurrentDistinctFiles: goroutines staging different volumes at
// once each get a device of their own.
func TestAttachConcurrentDistinctFiles(t *testing.T) {
	dir := poolDir(t)
	var imgs []string
	for _, name := range strings.Fields("a b c d e f g h") {
		imgs = append(imgs, newImage(t, dir, name+".img", 8*mib))
	}
	devs := attachAll(t, imgs)
	seen := map[int]string{}
	for i, d := range devs {
		if d == nil {
			continue
		}
		if prev, ok := seen[d.Number]; ok {
			t.Errorf("%s and %s share %s", prev, imgs[i], d.Path)
		}
		seen[d.Number] = imgs[i]
		if fdev, ino := stat(t, imgs[i]); d.Dev != fdev || d.Inode != ino || d.BackingFile != imgs[i] {
			t.Errorf("attach %s = %+v, want backed by it (dev %d inode %d)", imgs[i], d, fdev, ino)
		}
	}
	list, err := loop.List(dir)
	if err != nil || len(list) != len(imgs) {
		t.Fatalf("List = %v, %v, want %d devices", list, err, len(imgs))
	}
	for _, d := range list {
		if seen[d.Number] != d.BackingFile {
			t.Errorf("List has %s -> %s, want %s", d.Path, d.BackingFile, seen[d.Number])
		}
	}
}

// attachAll attaches files[i] in goroutine i, all at once, and returns the
// devices; every device is detached at cleanup, whatever the test decides.
func attachAll(t *testing.T, files []string) []*loop.Device {
	t.Helper()
	devs := make([]*loop.Device, len(files))
	errs := make([]error, len(files))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, f := range files {
		wg.Go(func() {
			<-start
			devs[i], errs[i] = loop.Attach(f, false)
		})
	}
	close(start)
	wg.Wait()
	registered := map[int]bool{}
	for _, d := range devs {
		if d != nil && !registered[d.Number] {
			registered[d.Number] = true
			detachAtCleanup(t, d)
		}
	}
	for i, err := range errs {
		if err != nil {
			t.Errorf("Attach(%s): %v", files[i], err)
		}
	}
	return devs
}

// TestFindLongPath: the kernel keeps only 63 bytes of the name; Find goes by
// inode and List by the full sysfs path.
func TestFindLongPath(t *testing.T) {
	dir := poolDir(t)
	deep := filepath.Join(dir, strings.Repeat("d", 60), strings.Repeat("e", 60), strings.Repeat("f", 60))
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	img := newImage(t, deep, "volume-with-a-rather-long-name.img", 8*mib)
	d := mustAttach(t, img, false)

	if d.BackingFile != img {
		t.Errorf("BackingFile = %q, want %q", d.BackingFile, img)
	}
	if name := kernelName(t, d); name == img || !strings.HasPrefix(img, name) {
		t.Errorf("LOOP_GET_STATUS64 name = %q, want a truncated prefix of %q", name, img)
	}
	if found, err := loop.Find(img); err != nil || found == nil || found.Number != d.Number {
		t.Errorf("Find = %+v, %v, want %s", found, err, d.Path)
	}
	if list, err := loop.List(dir); err != nil || len(list) != 1 || list[0].Number != d.Number {
		t.Errorf("List = %v, %v, want [%s]", list, err, d.Path)
	}
	if devs := losetupJ(t, img); len(devs) != 1 || devs[0] != d.Path {
		t.Errorf("losetup -j = %v, want [%s]", devs, d.Path)
	}
}

// kernelName returns the file name LOOP_GET_STATUS64 reports for d.
func kernelName(t *testing.T, d *loop.Device) string {
	t.Helper()
	f, err := os.Open(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	name, _, _ := bytes.Cut(info.File_name[:], []byte{0})
	return string(name)
}

// TestFindByInodeNotPath: a renamed image is still found; a new file at the
// old path is a different image.
func TestFindByInodeNotPath(t *testing.T) {
	dir := poolDir(t)
	old := newImage(t, dir, "old.img", 8*mib)
	d := mustAttach(t, old, false)
	moved := filepath.Join(dir, "moved.img")
	if err := os.Rename(old, moved); err != nil {
		t.Fatal(err)
	}
	found, err := loop.Find(moved)
	if err != nil || found == nil || found.Number != d.Number || found.BackingFile != moved {
		t.Errorf("Find(renamed) = %+v, %v, want %s backed by %s", found, err, d.Path, moved)
	}
	if name := kernelName(t, d); name != old {
		t.Errorf("LOOP_GET_STATUS64 name = %q, want the stale %q", name, old)
	}
	newImage(t, dir, "old.img", 8*mib)
	if found, err := loop.Find(old); err != nil || found != nil {
		t.Errorf("Find(new file at old path) = %+v, %v, want nil, nil", found, err)
	}
	d2 := mustAttach(t, old, false)
	if d2.Number == d.Number {
		t.Errorf("Attach(new file at old path) reused %s", d.Path)
	}
	if list, err := loop.List(dir); err != nil || len(list) != 2 {
		t.Errorf("List = %v, %v, want 2 devices", list, err)
	}
}

// TestOddNames: spaces and newlines in names survive Find and List.
func TestOddNames(t *testing.T) {
	dir := poolDir(t)
	names := []string{"with space.img", "trailing space ", "new\nline.img", "ends in newline\n", "(deleted)"}
	want := map[int]string{}
	for _, name := range names {
		img := newImage(t, dir, name, 8*mib)
		d := mustAttach(t, img, false)
		if d.BackingFile != img {
			t.Errorf("Attach(%q).BackingFile = %q", img, d.BackingFile)
		}
		if found, err := loop.Find(img); err != nil || found == nil || found.Number != d.Number {
			t.Errorf("Find(%q) = %+v, %v, want %s", img, found, err, d.Path)
		}
		want[d.Number] = img
	}
	list, err := loop.List(dir)
	if err != nil || len(list) != len(names) {
		t.Fatalf("List = %v, %v, want %d devices", list, err, len(names))
	}
	for _, d := range list {
		if want[d.Number] != d.BackingFile {
			t.Errorf("List: %s -> %q, want %q", d.Path, d.BackingFile, want[d.Number])
		}
	}
}

// TestListScope: List takes only files under the directory, not a sibling
// directory sharing its name as a prefix.
func TestListScope(t *testing.T) {
	base := poolDir(t)
	pool, sibling := filepath.Join(base, "pool"), filepath.Join(base, "pool2")
	for _, d := range []string{pool, sibling} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	in := mustAttach(t, newImage(t, pool, "in.img", 8*mib), false)
	mustAttach(t, newImage(t, sibling, "out.img", 8*mib), false)
	for _, dir := range []string{pool, pool + "/"} {
		if list, err := loop.List(dir); err != nil || len(list) != 1 || list[0].Number != in.Number {
			t.Errorf("List(%q) = %v, %v, want [%s]", dir, list, err, in.Path)
		}
	}
	if list, err := loop.List(base); err != nil || len(list) != 2 {
		t.Errorf("List(%q) = %v, %v, want 2 devices", base, list, err)
	}
}

// TestAttachFindsExisting: an attachment made before a restart, here by
// losetup, is found and reused, never doubled.
func TestAttachFindsExisting(t *testing.T) {
	dir := poolDir(t)
	img := newImage(t, dir, "pre.img", 8*mib)
	dev := losetupAttach(t, img)

	d, err := loop.Attach(img, false)
	if err != nil || d.Path != dev {
		t.Fatalf("Attach = %+v, %v, want the existing %s", d, err, dev)
	}
	if devs := losetupJ(t, img); len(devs) != 1 {
		t.Errorf("losetup -j = %v, want one device", devs)
	}
	if err := loop.DetachFile(img); err != nil {
		t.Fatalf("DetachFile: %v", err)
	}
	if devs := losetupJ(t, img); len(devs) != 0 {
		t.Errorf("losetup -j after DetachFile = %v, want none", devs)
	}
}

// TestDuplicate: two devices on one file (made by someone else) are reported,
// not picked from; DetachFile removes both.
func TestDuplicate(t *testing.T) {
	dir := poolDir(t)
	img := newImage(t, dir, "dup.img", 8*mib)
	a, b := losetupAttach(t, img), losetupAttach(t, img)

	_, err := loop.Find(img)
	if !errors.Is(err, loop.ErrDuplicate) || !strings.Contains(err.Error(), a) || !strings.Contains(err.Error(), b) {
		t.Errorf("Find = %v, want ErrDuplicate naming %s and %s", err, a, b)
	}
	if _, err := loop.Attach(img, false); !errors.Is(err, loop.ErrDuplicate) {
		t.Errorf("Attach = %v, want ErrDuplicate", err)
	}
	if err := loop.DetachFile(img); err != nil {
		t.Fatalf("DetachFile: %v", err)
	}
	if devs := losetupJ(t, img); len(devs) != 0 {
		t.Errorf("losetup -j after DetachFile = %v, want none", devs)
	}
}

// TestDirectIO: buffered by default; O_DIRECT on request where the filesystem
// can do it.
func TestDirectIO(t *testing.T) {
	dir := poolDir(t)
	buffered := mustAttach(t, newImage(t, dir, "buffered.img", 8*mib), false)
	if buffered.DirectIO || readSys(t, buffered, "loop/dio") != "0" {
		t.Errorf("default Attach = %+v, sysfs dio %s, want buffered", buffered, readSys(t, buffered, "loop/dio"))
	}

	img := newImage(t, dir, "direct.img", 8*mib)
	f, err := os.OpenFile(img, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Skipf("the filesystem of %s has no O_DIRECT: %v", dir, err)
	}
	f.Close()
	d, err := loop.AttachWith(img, loop.Options{DirectIO: true})
	if err != nil {
		t.Fatal(err)
	}
	detachAtCleanup(t, d)
	if !d.DirectIO || readSys(t, d, "loop/dio") != "1" {
		t.Errorf("AttachWith(DirectIO) = %+v, sysfs dio %s, want direct I/O", d, readSys(t, d, "loop/dio"))
	}
}

// TestBadFiles: only regular files, and no symlinks, are attached.
func TestBadFiles(t *testing.T) {
	dir := poolDir(t)
	img := newImage(t, dir, "real.img", 8*mib)
	link := filepath.Join(dir, "link.img")
	if err := os.Symlink(img, link); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.img")
	tests := []struct {
		name    string
		file    string
		ro      bool
		wantErr error
	}{
		{name: "missing", file: missing, wantErr: fs.ErrNotExist},
		{name: "directory read-write", file: dir, wantErr: unix.EISDIR},
		{name: "directory read-only", file: dir, ro: true, wantErr: loop.ErrNotRegular},
		{name: "symlink", file: link, wantErr: loop.ErrNotRegular},
		{name: "device node", file: "/dev/null", ro: true, wantErr: loop.ErrNotRegular},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if d, err := loop.Attach(tc.file, tc.ro); !errors.Is(err, tc.wantErr) {
				if d != nil {
					detachAtCleanup(t, d)
				}
				t.Errorf("Attach(%s) = %+v, %v, want %v", tc.file, d, err, tc.wantErr)
			}
		})
	}
	if _, err := loop.Find(link); !errors.Is(err, loop.ErrNotRegular) {
		t.Errorf("Find(symlink) = %v, want ErrNotRegular", err)
	}
	if _, err := loop.Find(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Find(missing) = %v, want ErrNotExist", err)
	}
	if err := loop.DetachFile(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("DetachFile(missing) = %v, want ErrNotExist", err)
	}
	if err := loop.Detach(&loop.Device{Path: "/dev/loop3", Number: 0}); err == nil {
		t.Errorf("Detach with a path not matching the number succeeded")
	}
	if _, err := loop.Size(img); !errors.Is(err, unix.ENOTTY) {
		t.Errorf("Size(regular file) = %v, want ENOTTY", err)
	}
}

// TestAttachWaitsForOtherProcess: Attach takes turns with another attacher of
// the same file, which holds the file's flock while it works.
func TestAttachWaitsForOtherProcess(t *testing.T) {
	dir := poolDir(t)
	img := newImage(t, dir, "locked.img", 8*mib)
	lock, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}

	done := make(chan *loop.Device, 1)
	go func() {
		d, err := loop.Attach(img, false)
		if err != nil {
			t.Errorf("Attach: %v", err)
		}
		done <- d
	}()
	// The flock is taken before the kernel is asked: while it is held,
	// nothing is attached, though an attach takes milliseconds.
	for deadline := time.Now().Add(200 * time.Millisecond); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if found, err := loop.Find(img); err != nil || found != nil {
			t.Errorf("Find while the flock is held = %+v, %v, want nil, nil", found, err)
			break
		}
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	d := <-done
	if d == nil {
		t.FailNow()
	}
	detachAtCleanup(t, d)
	if found, err := loop.Find(img); err != nil || found == nil || found.Number != d.Number {
		t.Errorf("Find after the flock is released = %+v, %v, want %s", found, err, d.Path)
	}
}

// TestSectorSizeStable: a device's logical block size is SectorSize whatever
// the I/O mode, also for a file that shares extents on XFS (which asks
// whole-block alignment for direct I/O to such files), so a filesystem made
// at one attachment mounts at the next.
func TestSectorSizeStable(t *testing.T) {
	requireLoop(t)
	dir := testutil.MountFS(t, testutil.XFSPlain, 512*mib)
	t.Cleanup(func() { assertNoneLeft(t, dir) })
	img := newImage(t, dir, "shared.img", 64*mib)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	clone, err := os.Create(filepath.Join(dir, "clone.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer clone.Close()
	if err := unix.IoctlFileClone(int(clone.Fd()), int(f.Fd())); err != nil {
		t.Fatalf("FICLONE: %v", err)
	}
	for _, tc := range []struct {
		name string
		o    loop.Options
	}{
		{"buffered", loop.Options{}},
		{"direct", loop.Options{DirectIO: true}},
	} {
		for _, file := range []string{img, clone.Name()} {
			d, err := loop.AttachWith(file, tc.o)
			if err != nil {
				t.Fatalf("%s %s: %v", tc.name, file, err)
			}
			lbs := readSys(t, d, "queue/logical_block_size")
			t.Logf("%s %s: logical block size %s, direct I/O %v", tc.name, filepath.Base(file), lbs, d.DirectIO)
			if err := loop.Detach(d); err != nil {
				t.Fatal(err)
			}
			if lbs != strconv.Itoa(loop.SectorSize) {
				t.Errorf("%s %s: logical block size %s, want %d", tc.name, file, lbs, loop.SectorSize)
			}
		}
	}
}
