package clone

import (
	"bytes"
	"fmt"
	"unsafe"

	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
)

// permBits are the mode bits chmod sets: permissions, setuid, setgid, sticky.
const permBits = 0o7777

// setFdMeta gives dst, a file or directory fd, the owner, xattrs, mode and
// times of src (an fd with stat st). The order matters: chown clears setuid
// and setgid and security.capability, so it comes first; an ACL xattr
// rewrites permission bits, so the mode comes after the xattrs; and every
// change but the times touches ctime only, so the times come last.
func (c *counter) setFdMeta(src, dst int, st *unix.Stat_t) error {
	if err := unix.Fchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := c.copyXattrs(fdXattrs(src), fdXattrs(dst)); err != nil {
		return err
	}
	if err := unix.Fchmod(dst, st.Mode&permBits); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return futimens(dst, st)
}

// setPathMeta gives name, a symlink or special file just made in the
// destination directory dirfd, the owner, xattrs, mode (not for symlinks,
// which have none) and times of the source entry pfd, an O_PATH fd with stat
// st. Neither is opened: xattrs go through the /proc magic links of O_PATH
// fds, which reach the inode itself, not a symlink's target nor a device.
func (c *counter) setPathMeta(pfd int, st *unix.Stat_t, dirfd int, name string) error {
	if err := unix.Fchownat(dirfd, name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := c.copyPathXattrs(pfd, dirfd, name); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		// name is a device node or fifo this copy just made, not a symlink.
		if err := unix.Fchmodat(dirfd, name, st.Mode&permBits, 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(dirfd, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// futimens sets fd's access and modification times to st's, to the
// nanosecond (utimensat with a NULL path acts on fd itself).
func futimens(fd int, st *unix.Stat_t) error {
	ts := [2]unix.Timespec{st.Atim, st.Mtim}
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
	if e != 0 {
		return fmt.Errorf("set times: %w", e)
	}
	return nil
}

// xattrIO reads and writes the extended attributes of one inode.
type xattrIO struct {
	list func(buf []byte) (int, error)
	get  func(name string, buf []byte) (int, error)
	set  func(name string, val []byte) error
}

func fdXattrs(fd int) xattrIO {
	return xattrIO{
		list: func(buf []byte) (int, error) { return unix.Flistxattr(fd, buf) },
		get:  func(name string, buf []byte) (int, error) { return unix.Fgetxattr(fd, name, buf) },
		set:  func(name string, val []byte) error { return unix.Fsetxattr(fd, name, val, 0) },
	}
}

// pathXattrs works on the inode of an O_PATH fd through its /proc magic
// link. The path is followed once, to the inode the fd holds; if that inode
// is a symlink it is not followed further.
func pathXattrs(fd int) xattrIO {
	p := safefs.ProcPath(fd)
	return xattrIO{
		list: func(buf []byte) (int, error) { return unix.Listxattr(p, buf) },
		get:  func(name string, buf []byte) (int, error) { return unix.Getxattr(p, name, buf) },
		set:  func(name string, val []byte) error { return unix.Setxattr(p, name, val, 0) },
	}
}

// copyPathXattrs copies the xattrs of the source entry pfd (O_PATH) to the
// new destination entry name of dirfd. Without /proc they cannot be reached
// without opening the entry: the entry counts in XattrsSkipped.
func (c *counter) copyPathXattrs(pfd, dirfd int, name string) error {
	names, err := readList(pathXattrs(pfd).list)
	if err == unix.ENOENT {
		c.XattrsSkipped++
		return nil
	}
	if err != nil {
		return fmt.Errorf("list xattrs: %w", err)
	}
	if len(names) == 0 {
		return nil
	}
	dfd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer unix.Close(dfd)
	return c.copyNamed(pathXattrs(pfd), pathXattrs(dfd), names)
}

// copyXattrs copies every xattr of src to dst.
func (c *counter) copyXattrs(src, dst xattrIO) error {
	names, err := readList(src.list)
	if err != nil {
		return fmt.Errorf("list xattrs: %w", err)
	}
	return c.copyNamed(src, dst, names)
}

// copyNamed copies the xattrs names (NUL-separated, as listxattr returns
// them) from src to dst. One removed meanwhile is not copied; one the
// destination filesystem does not support counts in XattrsSkipped.
func (c *counter) copyNamed(src, dst xattrIO, names []byte) error {
	var val []byte
	for len(names) > 0 {
		name := names
		if i := bytes.IndexByte(names, 0); i >= 0 {
			name, names = names[:i], names[i+1:]
		} else {
			names = nil
		}
		if len(name) == 0 {
			continue
		}
		n := string(name)
		v, err := readValue(src.get, n, val)
		if err == unix.ENODATA {
			continue
		}
		if err != nil {
			return fmt.Errorf("get xattr %s: %w", n, err)
		}
		val = v[:cap(v)]
		err = dst.set(n, v)
		if err == unix.EOPNOTSUPP {
			c.XattrsSkipped++
			continue
		}
		if err != nil {
			return fmt.Errorf("set xattr %s: %w", n, err)
		}
	}
	return nil
}

// readList returns the NUL-separated xattr names list returns, growing the
// buffer while the list grows under it.
func readList(list func([]byte) (int, error)) ([]byte, error) {
	for range 8 {
		n, err := list(nil)
		if err != nil || n == 0 {
			return nil, err
		}
		buf := make([]byte, n)
		n, err = list(buf)
		if err == unix.ERANGE {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
	return nil, unix.ERANGE
}

// readValue returns the value of the xattr name, reusing buf when it is
// large enough, growing it while the value grows under it.
func readValue(get func(string, []byte) (int, error), name string, buf []byte) ([]byte, error) {
	for range 8 {
		if len(buf) > 0 {
			n, err := get(name, buf)
			if err == nil {
				return buf[:n], nil
			}
			if err != unix.ERANGE {
				return nil, err
			}
		}
		n, err := get(name, nil) // the value's size
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return []byte{}, nil
		}
		buf = make([]byte, n)
	}
	return nil, unix.ERANGE
}
