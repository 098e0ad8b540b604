package loop

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// SetCapacity makes dev take the backing file's current size
// (LOOP_SET_CAPACITY), after the file was grown; the kernel does not notice by
// itself. The size is rounded down to the device's logical block size.
// dev must still be bound to the file dev.Dev and dev.Inode name: a device
// unbound or since reused for another file gives an error wrapping ENXIO.
func SetCapacity(dev *Device) error {
	if dev == nil || dev.Number < 0 || dev.Path != devPath(dev.Number) {
		return fmt.Errorf("set capacity: invalid device %+v", dev)
	}
	fd, err := openLoop(dev.Number, unix.O_RDONLY)
	if errors.Is(err, errGone) {
		return fmt.Errorf("set capacity of %s: %w", dev.Path, unix.ENXIO)
	}
	if err != nil {
		return fmt.Errorf("set capacity: %w", err)
	}
	defer unix.Close(fd)
	cur, err := status(dev.Number, fd)
	if err != nil {
		return fmt.Errorf("set capacity: %w", err)
	}
	if cur == nil || (dev.Dev != 0 || dev.Inode != 0) && (cur.Dev != dev.Dev || cur.Inode != dev.Inode) {
		return fmt.Errorf("set capacity of %s: no longer bound to %s: %w", dev.Path, dev.BackingFile, unix.ENXIO)
	}
	if err := unix.IoctlSetInt(fd, unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("set capacity of %s (%s): %w", dev.Path, cur.BackingFile,
			&os.PathError{Op: "LOOP_SET_CAPACITY", Path: dev.Path, Err: err})
	}
	return nil
}

// Size returns the size in bytes of the block device at devPath
// (BLKGETSIZE64). devPath may be a path a pod could have prepared, so only a
// block device at devPath itself is measured: a symlink there is not followed
// (the error wraps ELOOP), and anything else, a FIFO included, is refused
// without blocking, with the ENOTTY the ioctl would give there.
func Size(devPath string) (int64, error) {
	fd, err := unix.Open(devPath, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("size: %w", &os.PathError{Op: "open", Path: devPath, Err: err})
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("size: %w", &os.PathError{Op: "fstat", Path: devPath, Err: err})
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, fmt.Errorf("size: %w", &os.PathError{Op: "open", Path: devPath, Err: unix.ENOTTY})
	}
	n, err := unix.IoctlGetUint64(fd, unix.BLKGETSIZE64)
	if err != nil {
		return 0, fmt.Errorf("size: %w", &os.PathError{Op: "BLKGETSIZE64", Path: devPath, Err: err})
	}
	return int64(n), nil
}
