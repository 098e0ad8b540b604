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

// Xattr is one extended attribute: its full name (namespace included) and value.
type Xattr struct {
	Name  string
	Value []byte
}

// Meta is what a copy gives an entry besides its content: owner, permission bits,
// access and modification times, and extended attributes. A tree copy reads it
// from the source entry; pkg/transfer carries it over the network.
type Meta struct {
	// Mode holds the permission bits, setuid, setgid and sticky (type bits are
	// ignored).
	Mode         uint32
	UID, GID     uint32
	Atime, Mtime unix.Timespec
	Xattrs       []Xattr
}

// MetaOf returns the owner, mode and times of st (no xattrs).
func MetaOf(st *unix.Stat_t) Meta {
	return Meta{Mode: st.Mode & permBits, UID: st.Uid, GID: st.Gid, Atime: st.Atim, Mtime: st.Mtim}
}

// setFdMeta gives dst, a file or directory fd, the owner, xattrs, mode and
// times of src (an fd with stat st).
func (c *counter) setFdMeta(src, dst int, st *unix.Stat_t) error {
	xs, err := ReadXattrs(src, false)
	if err != nil {
		return err
	}
	m := MetaOf(st)
	m.Xattrs = xs
	skipped, err := SetFdMeta(dst, &m)
	c.XattrsSkipped += int64(skipped)
	return err
}

// setPathMeta gives name, a symlink or special file just made in the
// destination directory dirfd, the owner, xattrs, mode (not for symlinks,
// which have none) and times of the source entry pfd, an O_PATH fd with stat
// st. Neither is opened: xattrs go through the /proc magic links of O_PATH
// fds, which reach the inode itself, not a symlink's target nor a device.
// Without /proc they cannot be reached without opening the entry: the entry
// counts in XattrsSkipped.
func (c *counter) setPathMeta(pfd int, st *unix.Stat_t, dirfd int, name string) error {
	xs, err := ReadXattrs(pfd, true)
	if err == unix.ENOENT {
		c.XattrsSkipped++
		xs, err = nil, nil
	}
	if err != nil {
		return err
	}
	m := MetaOf(st)
	m.Xattrs = xs
	skipped, err := SetPathMeta(dirfd, name, &m, st.Mode&unix.S_IFMT == unix.S_IFLNK)
	c.XattrsSkipped += int64(skipped)
	return err
}

// SetFdMeta gives fd, an open regular file or directory, m's owner, xattrs, mode
// and times, and returns how many xattrs the filesystem refused as unsupported
// (EOPNOTSUPP; skipped). The order matters: chown clears setuid and setgid and
// security.capability, so it comes first; an ACL xattr rewrites permission bits,
// so the mode comes after the xattrs; and every change but the times touches
// ctime only, so the times come last.
func SetFdMeta(fd int, m *Meta) (skipped int, err error) {
	if err := unix.Fchown(fd, int(m.UID), int(m.GID)); err != nil {
		return 0, fmt.Errorf("chown: %w", err)
	}
	if skipped, err = setXattrs(fdXattrs(fd), m.Xattrs); err != nil {
		return skipped, err
	}
	if err := unix.Fchmod(fd, m.Mode&permBits); err != nil {
		return skipped, fmt.Errorf("chmod: %w", err)
	}
	return skipped, futimens(fd, m.Atime, m.Mtime)
}

// SetPathMeta gives name, a symlink (symlink true), device node or fifo in the
// directory dirfd, m's owner, xattrs, mode (not for symlinks, which have none)
// and times, in SetFdMeta's order, without opening it: xattrs go through the
// /proc magic link of an O_PATH fd, which reaches the inode itself. It returns
// how many xattrs were skipped: refused as unsupported, or all of them when /proc
// is not mounted.
func SetPathMeta(dirfd int, name string, m *Meta, symlink bool) (skipped int, err error) {
	if err := unix.Fchownat(dirfd, name, int(m.UID), int(m.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return 0, fmt.Errorf("chown: %w", err)
	}
	if len(m.Xattrs) > 0 {
		pfd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return 0, fmt.Errorf("open: %w", err)
		}
		skipped, err = setXattrs(pathXattrs(pfd), m.Xattrs)
		unix.Close(pfd)
		if err == unix.ENOENT { // no /proc
			skipped, err = len(m.Xattrs), nil
		}
		if err != nil {
			return skipped, err
		}
	}
	if !symlink {
		if err := unix.Fchmodat(dirfd, name, m.Mode&permBits, 0); err != nil {
			return skipped, fmt.Errorf("chmod: %w", err)
		}
	}
	ts := []unix.Timespec{m.Atime, m.Mtime}
	if err := unix.UtimesNanoAt(dirfd, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return skipped, fmt.Errorf("set times: %w", err)
	}
	return skipped, nil
}

// futimens sets fd's access and modification times, to the nanosecond
// (utimensat with a NULL path acts on fd itself).
func futimens(fd int, atime, mtime unix.Timespec) error {
	ts := [2]unix.Timespec{atime, mtime}
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

// ReadXattrs returns every extended attribute of the inode fd refers to: an open
// fd, or, with viaProc, an O_PATH fd (a symlink or special file, never opened)
// read through its /proc magic link, where ENOENT means /proc is not mounted. An
// attribute removed while it is read is left out.
func ReadXattrs(fd int, viaProc bool) ([]Xattr, error) {
	x := fdXattrs(fd)
	if viaProc {
		x = pathXattrs(fd)
	}
	names, err := readList(x.list)
	if err != nil {
		if err == unix.ENOENT && viaProc {
			return nil, err
		}
		return nil, fmt.Errorf("list xattrs: %w", err)
	}
	var out []Xattr
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
		v, err := readValue(x.get, n, nil)
		if err == unix.ENODATA {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("get xattr %s: %w", n, err)
		}
		out = append(out, Xattr{Name: n, Value: v})
	}
	return out, nil
}

// setXattrs sets xs through dst; one the destination filesystem does not support
// is skipped and counted.
func setXattrs(dst xattrIO, xs []Xattr) (skipped int, err error) {
	for _, x := range xs {
		err := dst.set(x.Name, x.Value)
		if err == unix.EOPNOTSUPP {
			skipped++
			continue
		}
		if err == unix.ENOENT {
			return skipped, err // the /proc magic link: no /proc
		}
		if err != nil {
			return skipped, fmt.Errorf("set xattr %s: %w", x.Name, err)
		}
	}
	return skipped, nil
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
