package fakehost

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/berth-csi/berth/pkg/storage/loop"
	"golang.org/x/sys/unix"
)

// LoopMajor is the major device number of the fake loop devices, as of real ones;
// device N is LoopMajor:N.
const LoopMajor = 7

// fileID is a backing file's identity, as the kernel keeps it: (st_dev, st_ino).
type fileID struct{ dev, ino uint64 }

// device is an attached fake loop device.
type device struct {
	dev  loop.Device
	file string // the path it was attached by, to read the file's size again
	size int64  // what the device shows: the file's size at attach or at SetCapacity
}

// loops is the fake's storage.Loops.
type loops struct{ h *Host }

// Attach attaches the file to the lowest free device, or returns the device already
// Available: the fake always has loop devices.
func (loops) Available() error { return nil }

// backed by it (loop.ErrMismatch when its read-only mode differs).
func (l loops) Attach(backingFile string, o loop.Options) (*loop.Device, error) {
	if hook := l.h.begin("Attach", backingFile).Attach; hook != nil {
		if err := hook(backingFile); err != nil {
			return nil, err
		}
	}
	h := l.h
	h.mu.Lock()
	defer h.mu.Unlock()
	id, size, err := backing(backingFile)
	if err != nil {
		return nil, fmt.Errorf("attach: %w", err)
	}
	if d := h.byFile(id); d != nil {
		if d.dev.ReadOnly != o.ReadOnly {
			return nil, fmt.Errorf("attach %s: %s has read-only=%t: %w", backingFile, d.dev.Path, d.dev.ReadOnly, loop.ErrMismatch)
		}
		dev := d.dev
		return &dev, nil
	}
	n := 0
	for h.loops[n] != nil {
		n++
	}
	shown, err := filepath.EvalSymlinks(backingFile)
	if err != nil {
		shown = abs(backingFile)
	}
	d := &device{file: backingFile, size: size / loop.SectorSize * loop.SectorSize, dev: loop.Device{
		Path: h.devPath(n), Number: n, BackingFile: shown, Inode: id.ino, Dev: id.dev,
		ReadOnly: o.ReadOnly, DirectIO: o.DirectIO,
	}}
	h.loops[n] = d
	dev := d.dev
	return &dev, nil
}

func (l loops) Find(backingFile string) (*loop.Device, error) {
	if hook := l.h.hook().Find; hook != nil {
		if err := hook(backingFile); err != nil {
			return nil, err
		}
	}
	l.h.mu.Lock()
	defer l.h.mu.Unlock()
	id, _, err := backing(backingFile)
	if err != nil {
		return nil, fmt.Errorf("find loop device: %w", err)
	}
	if d := l.h.byFile(id); d != nil {
		dev := d.dev
		return &dev, nil
	}
	return nil, nil
}

// List returns the devices whose backing file, as shown, lies under dir.
func (l loops) List(dir string) ([]*loop.Device, error) {
	if hook := l.h.hook().List; hook != nil {
		if err := hook(dir); err != nil {
			return nil, err
		}
	}
	l.h.mu.Lock()
	defer l.h.mu.Unlock()
	prefix := strings.TrimRight(dir, "/") + "/"
	var out []*loop.Device
	for _, n := range l.h.loopNumbers() {
		if d := l.h.loops[n].dev; strings.HasPrefix(d.BackingFile, prefix) {
			out = append(out, &d)
		}
	}
	return out, nil
}

// Detach detaches the device unless a mount shows its filesystem (loop.ErrBusy); a
// device unbound, or bound by now to another file, is left alone.
func (l loops) Detach(d *loop.Device) error {
	if d == nil {
		return errors.New("detach: no device")
	}
	if hook := l.h.begin("Detach", d.Path).Detach; hook != nil {
		if err := hook(d.Path); err != nil {
			return err
		}
	}
	l.h.mu.Lock()
	defer l.h.mu.Unlock()
	if d.Number < 0 || d.Path != l.h.devPath(d.Number) {
		return fmt.Errorf("detach: invalid device %+v", d)
	}
	cur := l.h.loops[d.Number]
	if cur == nil || (d.Dev != 0 || d.Inode != 0) && (cur.dev.Dev != d.Dev || cur.dev.Inode != d.Inode) {
		return nil
	}
	return l.h.detach(cur)
}

// detach removes cur unless its filesystem is mounted; the caller holds h.mu.
func (h *Host) detach(cur *device) error {
	for _, e := range h.mounts {
		if e.info.Major == LoopMajor && e.info.Minor == cur.dev.Number {
			return fmt.Errorf("detach %s: mounted at %s: %w", cur.dev.Path, e.info.Mountpoint, loop.ErrBusy)
		}
	}
	delete(h.loops, cur.dev.Number)
	return nil
}

func (l loops) DetachFile(backingFile string) error {
	if hook := l.h.begin("DetachFile", backingFile).DetachFile; hook != nil {
		if err := hook(backingFile); err != nil {
			return err
		}
	}
	l.h.mu.Lock()
	defer l.h.mu.Unlock()
	id, _, err := backing(backingFile)
	if err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	if d := l.h.byFile(id); d != nil {
		return l.h.detach(d)
	}
	return nil
}

// SetCapacity makes the device show its file's current size.
func (l loops) SetCapacity(d *loop.Device) error {
	if d == nil {
		return errors.New("set capacity: no device")
	}
	if hook := l.h.begin("SetCapacity", d.Path).SetCapacity; hook != nil {
		if err := hook(d.Path); err != nil {
			return err
		}
	}
	l.h.mu.Lock()
	defer l.h.mu.Unlock()
	cur := l.h.loops[d.Number]
	if cur == nil || d.Path != cur.dev.Path || cur.dev.Dev != d.Dev || cur.dev.Inode != d.Inode {
		return fmt.Errorf("set capacity of %s: no longer bound to %s: %w", d.Path, d.BackingFile, unix.ENXIO)
	}
	id, size, err := backing(cur.file)
	if err != nil || id != (fileID{cur.dev.Dev, cur.dev.Inode}) {
		return fmt.Errorf("set capacity of %s: backing file %s replaced or unreadable (%v): %w", d.Path, cur.file, err, unix.ENXIO)
	}
	cur.size = size / loop.SectorSize * loop.SectorSize
	return nil
}

// Size is the size of the device at path: a fake device node, or a target it is
// bound on (BindBlock).
func (l loops) Size(path string) (int64, error) {
	if hook := l.h.hook().Size; hook != nil {
		if err := hook(path); err != nil {
			return 0, err
		}
	}
	h := l.h
	h.mu.Lock()
	defer h.mu.Unlock()
	p := abs(path)
	if e := h.at(p); e != nil && e.dev != "" {
		p = e.dev
	}
	if d, ok := h.deviceAt(p); ok {
		return d.size, nil
	}
	return 0, fmt.Errorf("size: %w", &os.PathError{Op: "BLKGETSIZE64", Path: path, Err: unix.ENOTTY})
}

// DevNumber is LoopMajor:N for any fake device node, bound or not.
func (l loops) DevNumber(d *loop.Device) (int, int, error) {
	if hook := l.h.hook().DevNumber; hook != nil {
		if err := hook(d.Path); err != nil {
			return 0, 0, err
		}
	}
	if d.Number < 0 || d.Path != l.h.devPath(d.Number) {
		return 0, 0, &os.PathError{Op: "stat", Path: d.Path, Err: unix.ENOENT}
	}
	return LoopMajor, d.Number, nil
}

// backing checks a would-be backing file as package loop does (a regular file, not a
// symlink) and returns its identity and size.
func backing(path string) (fileID, int64, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fileID{}, 0, &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fileID{}, 0, fmt.Errorf("%s: %w", path, loop.ErrNotRegular)
	}
	return fileID{uint64(st.Dev), uint64(st.Ino)}, st.Size, nil
}

// devPath is the name of fake device n.
func (h *Host) devPath(n int) string { return filepath.Join(h.devDir, "fakeloop"+strconv.Itoa(n)) }

// deviceAt is the bound device whose node is path; the caller holds h.mu.
func (h *Host) deviceAt(path string) (*device, bool) {
	for _, d := range h.loops {
		if d.dev.Path == path {
			return d, true
		}
	}
	return nil, false
}

// byFile is the device backed by the file id, nil when none; the caller holds h.mu.
func (h *Host) byFile(id fileID) *device {
	for _, d := range h.loops {
		if d.dev.Dev == id.dev && d.dev.Inode == id.ino {
			return d
		}
	}
	return nil
}

// loopNumbers are the bound devices' numbers, in order; the caller holds h.mu.
func (h *Host) loopNumbers() []int {
	out := make([]int, 0, len(h.loops))
	for n := range h.loops {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}
