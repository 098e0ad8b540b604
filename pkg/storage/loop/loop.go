// Package loop attaches regular files to loop block devices, finds the
// attachments that already exist (after a driver restart, or made by another
// process), detaches and resizes them. Everything is done with ioctls on
// /dev/loop-control and /dev/loopN and reads of /sys/block: no child process.
//
// Berth attaches a volume's image file at NodeStageVolume and detaches it at
// NodeUnstageVolume. The attachment outlives the driver process (no
// LO_FLAGS_AUTOCLEAR), so the package keeps no state of its own: the kernel is
// the record. An attachment is identified by the backing file's (st_dev,
// st_ino) as LOOP_GET_STATUS64 reports them, never by the file name the
// kernel stores, which is truncated at 63 bytes and goes stale on rename.
//
// Attach calls take turns: within the process on a mutex, across processes on
// a flock of the image file, so one file is never attached twice by Berth.
// Detach waits until the kernel has really unbound the device, which it
// defers while anyone (udev, a concurrent Find) holds the device open.
//
// All functions need CAP_SYS_ADMIN (or write access to the loop device nodes)
// and, where /dev has no node for a device (a container with a static /dev),
// the right to mknod one.
package loop

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Sentinel errors, returned wrapped; callers match them with errors.Is.
var (
	// ErrNotRegular: the backing file is not a regular file (or is a symlink).
	ErrNotRegular = errors.New("not a regular file")
	// ErrMismatch: the file is attached already, with other parameters
	// (read-only mode, offset or size limit) than asked for.
	ErrMismatch = errors.New("attached with different parameters")
	// ErrDuplicate: more than one loop device is backed by the same file. Berth
	// never does that; an operator or another program did, and someone must
	// look before a filesystem is mounted twice.
	ErrDuplicate = errors.New("backed by more than one loop device")
	// ErrBusy: the device is in use (mounted, held open, or being detached)
	// and the operation cannot go on now.
	ErrBusy = errors.New("loop device busy")
)

const (
	// attachTries bounds the retries when another process takes the free
	// device between LOOP_CTL_GET_FREE and LOOP_CONFIGURE.
	attachTries = 10
	// lockWait bounds how long Attach waits for another process attaching the
	// same file (the wait normally lasts a few milliseconds).
	lockWait = 10 * time.Second
	// detachWait bounds how long Detach waits for the kernel to finish a
	// detach deferred by a short-lived opener (udev's blkid, a concurrent Find).
	detachWait = 2 * time.Second
	// pollInterval is the pause between two checks in those waits.
	pollInterval = 10 * time.Millisecond
)

// Device is a bound loop device, as the kernel reported it when asked.
type Device struct {
	// Path is the device node, /dev/loopN.
	Path string
	// Number is N in /dev/loopN.
	Number int
	// BackingFile is the backing file's path as /sys/block/loopN/loop/backing_file
	// shows it when queried: the current name, resolved from the mount
	// namespace's root, with " (deleted)" appended once the file is unlinked.
	// It is for people and for List; identity is Dev and Inode.
	BackingFile string
	// Inode and Dev are the backing file's st_ino and st_dev.
	Inode, Dev uint64
	// Offset and SizeLimit are the byte range of the file the device maps
	// (SizeLimit 0: to the end). Berth always attaches with both 0.
	Offset, SizeLimit uint64
	// ReadOnly is set when the device refuses writes.
	ReadOnly bool
	// DirectIO is set when the device reads and writes the file with O_DIRECT.
	DirectIO bool
	// AutoClear is set when the kernel will detach the device at its last
	// close: LOOP_CLR_FD was called while it was open, or whoever attached it
	// asked for that. Such a device must not be reused.
	AutoClear bool
}

// Options tune an attachment.
type Options struct {
	// ReadOnly attaches the file read-only: it is opened O_RDONLY and the
	// device refuses writes.
	ReadOnly bool
	// DirectIO asks the device to use O_DIRECT on the file, bypassing the
	// page cache for the data (LO_FLAGS_DIRECT_IO): the pages are cached once,
	// by the filesystem on the device, not a second time for the file. The
	// kernel declines where the file cannot take 512-byte aligned direct I/O
	// (no O_DIRECT on its filesystem, or XFS asking whole-block alignment for
	// a reflinked file) and the device stays buffered; Device.DirectIO tells.
	DirectIO bool
}

// SectorSize is the logical block size of every device Attach binds, whatever
// its I/O mode. Left to the kernel, a direct-I/O device takes the file's
// direct-I/O alignment, which XFS raises to its block size once a file shares
// extents (after a snapshot or a clone): the same image would show 512-byte
// sectors at one attachment and 4096 at the next, and a filesystem made with
// smaller sectors or blocks (ext4's 1 KiB blocks on small images) would no
// longer mount. A volume's geometry must not depend on how it was last used.
const SectorSize = 512

// attachMu serialises Attach within the process, so that two goroutines cannot
// both find a file unattached and attach it twice. Attach takes a few
// milliseconds; across processes the same is done by a flock (see lockFile).
var attachMu sync.Mutex

// Attach attaches backingFile to a free loop device, read-only when readOnly
// is set, and returns the device; it is AttachWith with default options.
func Attach(backingFile string, readOnly bool) (*Device, error) {
	return AttachWith(backingFile, Options{ReadOnly: readOnly})
}

// AttachWith attaches backingFile, a regular file (not a symlink), to a free
// loop device and returns the device. The attachment survives the calling
// process; Detach or DetachFile ends it.
//
// It is idempotent: when a device is already backed by the file (found as Find
// does), that device is returned and nothing is attached. If that device's
// read-only mode differs from o.ReadOnly, or it maps only part of the file,
// the error wraps ErrMismatch; if it is being detached (AutoClear), ErrBusy.
// Two devices backed by the file give ErrDuplicate. o.DirectIO is not
// compared: it is a performance setting of the device, not of the volume.
//
// The free device is taken with LOOP_CTL_GET_FREE and bound with
// LOOP_CONFIGURE; if another process binds it first (EBUSY), Attach retries
// with a new one, up to attachTries times.
func AttachWith(backingFile string, o Options) (*Device, error) {
	attachMu.Lock()
	defer attachMu.Unlock()

	mode := unix.O_RDWR
	if o.ReadOnly {
		mode = unix.O_RDONLY
	}
	fd, err := unix.Open(backingFile, mode|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		if err == unix.ELOOP {
			return nil, fmt.Errorf("attach %s: %w (a symlink)", backingFile, ErrNotRegular)
		}
		return nil, fmt.Errorf("attach: %w", &os.PathError{Op: "open", Path: backingFile, Err: err})
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("attach: %w", &os.PathError{Op: "fstat", Path: backingFile, Err: err})
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("attach %s: %w", backingFile, ErrNotRegular)
	}
	unlock, err := lockFile(backingFile, &st)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", backingFile, err)
	}
	defer unlock()

	devs, err := findID(uint64(st.Dev), uint64(st.Ino))
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", backingFile, err)
	}
	if len(devs) > 0 {
		d, err := only(backingFile, devs)
		if err != nil {
			return nil, fmt.Errorf("attach: %w", err)
		}
		if err := reusable(d, o); err != nil {
			return nil, fmt.Errorf("attach %s: %w", backingFile, err)
		}
		return d, nil
	}

	var lastErr error
	for range attachTries {
		n, err := getFree()
		if err != nil {
			return nil, fmt.Errorf("attach %s: %w", backingFile, err)
		}
		d, err := configure(n, fd, backingFile, o)
		if err == nil {
			return d, nil
		}
		if !raced(err) {
			return nil, fmt.Errorf("attach %s: %w", backingFile, err)
		}
		lastErr = err
	}
	return nil, fmt.Errorf("attach %s: no free loop device in %d tries, last: %w",
		backingFile, attachTries, lastErr)
}

// reusable tells whether an existing attachment d serves a request with o.
func reusable(d *Device, o Options) error {
	switch {
	case d.AutoClear:
		return fmt.Errorf("%s is being detached (autoclear pending until its last close): %w", d.Path, ErrBusy)
	case d.ReadOnly != o.ReadOnly:
		return fmt.Errorf("%s has read-only=%t, want %t: %w", d.Path, d.ReadOnly, o.ReadOnly, ErrMismatch)
	case d.Offset != 0 || d.SizeLimit != 0:
		return fmt.Errorf("%s maps offset %d size limit %d of the file, want all of it: %w",
			d.Path, d.Offset, d.SizeLimit, ErrMismatch)
	}
	return nil
}

// raced tells whether configure failed because the free device went to
// someone else (bound, claimed or removed), so that another one may succeed.
func raced(err error) bool {
	return errors.Is(err, unix.EBUSY) || errors.Is(err, unix.ENXIO) ||
		errors.Is(err, unix.ENODEV) || errors.Is(err, errGone)
}

// getFree returns the number of an unbound loop device, which the kernel
// creates when none is free.
func getFree() (int, error) {
	ctl, err := unix.Open(controlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, &os.PathError{Op: "open", Path: controlPath, Err: err}
	}
	defer unix.Close(ctl)
	n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
	if err != nil {
		return 0, &os.PathError{Op: "LOOP_CTL_GET_FREE", Path: controlPath, Err: err}
	}
	return n, nil
}

// configure binds loop device n to the open file fd (named name) and returns
// the bound device. On failure the device is left unbound.
func configure(n, fd int, name string, o Options) (*Device, error) {
	mode := unix.O_RDWR
	if o.ReadOnly {
		mode = unix.O_RDONLY
	}
	dfd, err := openLoop(n, mode)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	// Size is struct loop_config's block_size.
	cfg := unix.LoopConfig{Fd: uint32(fd), Size: SectorSize}
	if o.ReadOnly {
		cfg.Info.Flags |= unix.LO_FLAGS_READ_ONLY
	}
	if o.DirectIO {
		cfg.Info.Flags |= unix.LO_FLAGS_DIRECT_IO
	}
	// Informational only (losetup's old interface shows it); the last byte
	// stays NUL, as the kernel requires.
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], name)
	path := devPath(n)
	if err := unix.IoctlLoopConfigure(dfd, &cfg); err != nil {
		return nil, fmt.Errorf("bind %s to %s: %w", path, name,
			&os.PathError{Op: "LOOP_CONFIGURE", Path: path, Err: err})
	}
	d, err := status(n, dfd)
	if err == nil && d == nil {
		err = fmt.Errorf("%s unbound right after LOOP_CONFIGURE", path)
	}
	if err != nil {
		// Roll back: the attachment is not returned, so it must not stay.
		if cerr := unix.IoctlSetInt(dfd, unix.LOOP_CLR_FD, 0); cerr != nil && cerr != unix.ENXIO {
			return nil, fmt.Errorf("%w (and detach %s: %w)", err, path, cerr)
		}
		return nil, err
	}
	return d, nil
}

// Find returns the loop device backed by backingFile, or nil, nil when there is
// none. The file is identified by its (st_dev, st_ino), so a renamed file or
// one whose path is longer than the kernel's 64-byte name field is still found,
// and a new file at the old path is not mistaken for the old one. backingFile
// must be a regular file, not a symlink (as for Attach); a missing file is an
// error wrapping fs.ErrNotExist. Two devices backed by the file give
// ErrDuplicate, naming both.
func Find(backingFile string) (*Device, error) {
	var st unix.Stat_t
	if err := unix.Lstat(backingFile, &st); err != nil {
		return nil, fmt.Errorf("find loop device: %w", &os.PathError{Op: "lstat", Path: backingFile, Err: err})
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("find loop device of %s: %w", backingFile, ErrNotRegular)
	}
	devs, err := findID(uint64(st.Dev), uint64(st.Ino))
	if err != nil {
		return nil, fmt.Errorf("find loop device of %s: %w", backingFile, err)
	}
	if len(devs) == 0 {
		return nil, nil
	}
	return only(backingFile, devs)
}

// only returns the single device of devs, or an error naming them all.
func only(name string, devs []*Device) (*Device, error) {
	if len(devs) == 1 {
		return devs[0], nil
	}
	paths := make([]string, len(devs))
	for i, d := range devs {
		paths[i] = d.Path
	}
	return nil, fmt.Errorf("%s is %w: %s", name, ErrDuplicate, strings.Join(paths, ", "))
}

// findID returns the bound loop devices whose backing file is (dev, ino).
func findID(dev, ino uint64) ([]*Device, error) {
	var found []*Device
	err := eachBound(func(d *Device) {
		if d.Dev == dev && d.Inode == ino {
			found = append(found, d)
		}
	})
	return found, err
}

// List returns the bound loop devices whose backing file lies under dir, by
// the path the kernel shows (Device.BackingFile), in device number order. A
// file unlinked while attached still counts, under its old name. It is meant
// for reconciliation at startup and for tests: one device per staged image.
func List(dir string) ([]*Device, error) {
	prefix := strings.TrimRight(dir, "/") + "/"
	var found []*Device
	err := eachBound(func(d *Device) {
		if strings.HasPrefix(d.BackingFile, prefix) {
			found = append(found, d)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("list loop devices under %s: %w", dir, err)
	}
	return found, nil
}

// Detach detaches dev from its backing file with LOOP_CLR_FD and waits, up to
// detachWait, until the device is unbound. It is idempotent: a device already
// unbound, or bound by now to another file than dev.Dev and dev.Inode name
// (the number was reused), is left alone and nil returned. dev.Path must be
// /dev/loop<dev.Number>.
//
// Callers unmount the device first. A device mounted or otherwise held
// exclusively (a device-mapper target, an O_EXCL opener) is refused with
// ErrBusy and left as it was. A device merely held open (a pod with the raw
// block device, udev's blkid, another process's Find) is another matter: the
// kernel accepts LOOP_CLR_FD but detaches at the last close, and until then
// the device stays bound, with AutoClear set. Detach waits for that; if it
// does not happen within detachWait, the error wraps ErrBusy and the detach
// stays pending in the kernel.
func Detach(dev *Device) error {
	if dev == nil || dev.Number < 0 || dev.Path != devPath(dev.Number) {
		return fmt.Errorf("detach: invalid device %+v", dev)
	}
	cur, err := clearFD(dev)
	if err != nil || cur == nil {
		return err
	}
	deadline := time.Now().Add(detachWait)
	for {
		d, err := describe(dev.Number)
		if err != nil {
			return fmt.Errorf("detach: %w", err)
		}
		if d == nil || d.Dev != cur.Dev || d.Inode != cur.Inode {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("detach %s: still bound to %s after %v, held open elsewhere "+
				"(the kernel detaches it at the last close): %w", dev.Path, cur.BackingFile, detachWait, ErrBusy)
		}
		time.Sleep(pollInterval)
	}
}

// clearFD asks the kernel to detach dev (LOOP_CLR_FD) and returns the device
// as it was, or nil when there was nothing to detach.
func clearFD(dev *Device) (*Device, error) {
	// O_EXCL fails with EBUSY while a filesystem is mounted on the device,
	// where LOOP_CLR_FD would "succeed" and detach it at unmount.
	fd, err := openLoop(dev.Number, unix.O_RDONLY|unix.O_EXCL)
	if errors.Is(err, errGone) {
		return nil, nil
	}
	if errors.Is(err, unix.EBUSY) {
		return nil, fmt.Errorf("detach %s: mounted or held exclusively: %w: %w", dev.Path, ErrBusy, err)
	}
	if err != nil {
		return nil, fmt.Errorf("detach: %w", err)
	}
	defer unix.Close(fd)
	// While fd is open the binding cannot change under us: a LOOP_CLR_FD by
	// someone else is deferred to our close, and a new binding needs an
	// unbound device.
	cur, err := status(dev.Number, fd)
	if err != nil {
		return nil, fmt.Errorf("detach: %w", err)
	}
	if cur == nil || (dev.Dev != 0 || dev.Inode != 0) && (cur.Dev != dev.Dev || cur.Inode != dev.Inode) {
		return nil, nil
	}
	if err := unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0); err != nil {
		if err == unix.ENXIO {
			return nil, nil
		}
		return nil, fmt.Errorf("detach %s from %s: %w", dev.Path, cur.BackingFile,
			&os.PathError{Op: "LOOP_CLR_FD", Path: dev.Path, Err: err})
	}
	return cur, nil
}

// DetachFile detaches every loop device backed by backingFile (found as Find
// does; normally one), as Detach does, and checks that none is left; nil when
// none was attached. A device still bound gives an error wrapping ErrBusy (see
// Detach): the kernel detaches it at its last close, and until then a new
// Attach of the file fails with ErrBusy too.
//
// A missing backingFile is an error wrapping fs.ErrNotExist, not a success: an
// image unlinked while attached keeps its device, which only List finds.
func DetachFile(backingFile string) error {
	var st unix.Stat_t
	if err := unix.Lstat(backingFile, &st); err != nil {
		return fmt.Errorf("detach: %w", &os.PathError{Op: "lstat", Path: backingFile, Err: err})
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("detach %s: %w", backingFile, ErrNotRegular)
	}
	dev, ino := uint64(st.Dev), uint64(st.Ino)
	devs, err := findID(dev, ino)
	if err != nil {
		return fmt.Errorf("detach %s: %w", backingFile, err)
	}
	var errs []error
	for _, d := range devs {
		errs = append(errs, Detach(d))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach %s: %w", backingFile, err)
	}
	if devs, err = findID(dev, ino); err != nil {
		return fmt.Errorf("detach %s: %w", backingFile, err)
	}
	if len(devs) > 0 {
		return fmt.Errorf("detach %s: attached again, to %s: %w", backingFile, devs[0].Path, ErrBusy)
	}
	return nil
}
