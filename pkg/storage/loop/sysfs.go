package loop

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	controlPath = "/dev/loop-control"
	sysBlock    = "/sys/block"
	// loopMajor is the block major of loop devices (LOOP_MAJOR).
	loopMajor = 7
)

// errGone: the loop device was removed or is being torn down.
var errGone = errors.New("loop device gone")

// devPath is the device node of loop device n.
func devPath(n int) string { return "/dev/loop" + strconv.Itoa(n) }

// sysPath is the sysfs directory of loop device n.
func sysPath(n int) string { return sysBlock + "/loop" + strconv.Itoa(n) }

// openLoop opens loop device n with flags (O_CLOEXEC added). A missing node is
// created (a container's /dev may lack it) with the device number sysfs gives,
// which is not always 7:n (loop.max_part shifts minors); an existing node is
// checked to be that device. Errors wrap errGone when the device no longer
// exists or is being torn down.
func openLoop(n, flags int) (int, error) {
	path := devPath(n)
	rdev, err := sysDevNumber(n)
	if err != nil {
		return -1, err
	}
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
	if err == unix.ENOENT {
		err = unix.Mknod(path, unix.S_IFBLK|0o660, int(rdev))
		if err != nil && err != unix.EEXIST {
			return -1, &os.PathError{Op: "mknod", Path: path, Err: err}
		}
		fd, err = unix.Open(path, flags|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		perr := &os.PathError{Op: "open", Path: path, Err: err}
		if err == unix.ENXIO || err == unix.ENODEV {
			return -1, fmt.Errorf("%w: %w", errGone, perr)
		}
		return -1, perr
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK || uint64(st.Rdev) != rdev {
		unix.Close(fd)
		return -1, fmt.Errorf("%s is not loop device %d (%d:%d per sysfs), has mode %#o rdev %d:%d",
			path, n, unix.Major(rdev), unix.Minor(rdev), st.Mode, unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev)))
	}
	return fd, nil
}

// sysDevNumber reads loop device n's device number from sysfs.
func sysDevNumber(n int) (uint64, error) {
	path := sysPath(n) + "/dev"
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("%w: %w", errGone, err)
	}
	if err != nil {
		return 0, err
	}
	maj, minor, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(minor, 10, 32)
	if !ok || err1 != nil || err2 != nil || ma != loopMajor {
		return 0, fmt.Errorf("%s: unexpected content %q", path, b)
	}
	return unix.Mkdev(uint32(ma), uint32(mi)), nil
}

// status describes loop device n, open as fd; nil, nil when it is unbound.
func status(n, fd int) (*Device, error) {
	path := devPath(n)
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err == unix.ENXIO {
		return nil, nil
	}
	if err != nil {
		return nil, &os.PathError{Op: "LOOP_GET_STATUS64", Path: path, Err: err}
	}
	if int(info.Number) != n {
		return nil, fmt.Errorf("%s reports itself as loop device %d", path, info.Number)
	}
	return &Device{
		Path:        path,
		Number:      n,
		BackingFile: backingFile(n, info),
		Inode:       info.Inode,
		Dev:         info.Device,
		Offset:      info.Offset,
		SizeLimit:   info.Sizelimit,
		ReadOnly:    info.Flags&unix.LO_FLAGS_READ_ONLY != 0,
		DirectIO:    info.Flags&unix.LO_FLAGS_DIRECT_IO != 0,
		AutoClear:   info.Flags&unix.LO_FLAGS_AUTOCLEAR != 0,
	}, nil
}

// backingFile is the path of bound loop device n's backing file as sysfs shows
// it, or, when sysfs cannot (a path longer than a page), the name stored at
// attach time, truncated to 63 bytes. Only the final newline is removed: a
// file name may itself end in a space or a newline.
func backingFile(n int, info *unix.LoopInfo64) string {
	b, err := os.ReadFile(sysPath(n) + "/loop/backing_file")
	if err == nil && len(b) > 0 {
		return string(bytes.TrimSuffix(b, []byte("\n")))
	}
	name, _, _ := bytes.Cut(info.File_name[:], []byte{0})
	return string(name)
}

// eachBound calls fn with every bound loop device, in number order. Devices
// unbound or removed while it runs are skipped.
//
// A device is bound when /sys/block/loopN/loop exists; each is then opened
// (read-only, which neither changes it nor, unlike a write open, makes udev
// probe it) for LOOP_GET_STATUS64. Holding it open defers a concurrent
// LOOP_CLR_FD to the close: the caller of that detach sees it complete a
// little later.
func eachBound(fn func(*Device)) error {
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return err
	}
	var nums []int
	for _, e := range ents {
		s, ok := strings.CutPrefix(e.Name(), "loop")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || strconv.Itoa(n) != s {
			continue
		}
		if _, err := os.Lstat(sysPath(n) + "/loop"); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return err
		}
		nums = append(nums, n)
	}
	slices.Sort(nums)
	for _, n := range nums {
		d, err := describe(n)
		if err != nil {
			return err
		}
		if d != nil {
			fn(d)
		}
	}
	return nil
}

// describe opens loop device n and returns its status; nil, nil when it is
// unbound or gone.
func describe(n int) (*Device, error) {
	fd, err := openLoop(n, unix.O_RDONLY)
	if errors.Is(err, errGone) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return status(n, fd)
}

// lockFile takes an exclusive flock on the file name, already open and
// fstat'ed as st, so that processes attaching it (two driver instances during
// an upgrade) take turns, and returns the unlock function.
//
// The lock is taken on a descriptor of its own: the attach descriptor goes to
// the kernel, which keeps it as long as the device is bound, and a flock on it
// would outlive this process. The wait is bounded by lockWait (ErrBusy);
// flock is advisory, so only attachers using this package take turns.
func lockFile(name string, st *unix.Stat_t) (func(), error) {
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	var lst unix.Stat_t
	if err := unix.Fstat(fd, &lst); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "fstat", Path: name, Err: err}
	}
	if lst.Dev != st.Dev || lst.Ino != st.Ino {
		unix.Close(fd)
		return nil, fmt.Errorf("%s was replaced while being attached: %w", name, ErrBusy)
	}
	deadline := time.Now().Add(lockWait)
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { unix.Close(fd) }, nil
		}
		if err != unix.EWOULDBLOCK && err != unix.EINTR {
			unix.Close(fd)
			return nil, &os.PathError{Op: "flock", Path: name, Err: err}
		}
		if time.Now().After(deadline) {
			unix.Close(fd)
			return nil, fmt.Errorf("another process is attaching %s (flock held for %v): %w", name, lockWait, ErrBusy)
		}
		time.Sleep(pollInterval)
	}
}
