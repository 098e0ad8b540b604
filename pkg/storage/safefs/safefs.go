// Package safefs walks and opens paths inside directories that untrusted code
// can write to, such as volume data a pod controls, without ever following a
// symlink or leaving the directory it was given. Nothing a pod plants inside a
// volume (a symlink, a fifo, a device node, a hard link, a bind mount, a very
// deep tree) can make the driver touch a host file or run out of fds.
//
// Every lookup goes through openat2(2) with RESOLVE_BENEATH and
// RESOLVE_NO_SYMLINKS, relative to an fd already held, and entries are removed
// with unlinkat(2); the package needs Linux 5.6 or later. The one lookup
// without RESOLVE_BENEATH is a walk's climb back to a level whose fd it gave
// back: ".." of the level below, accepted only if it is the very inode the
// walk left (so walks stay linear in their entries whatever the depth).
package safefs

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// maxOpenRetries bounds retries of an openat2 that the kernel refused with
// EAGAIN because a rename or mount raced with a confined lookup.
const maxOpenRetries = 16

// OpenBeneath opens rel, a relative path of one or more components, beneath
// the directory root. No component may be a symlink (the last one included),
// an absolute path or ".." escape, or a magic link: the kernel refuses such a
// lookup with an error that keeps its errno (ELOOP for a symlink, EXDEV for an
// escape), so callers can test it with errors.Is, for example against
// unix.ELOOP, unix.EXDEV or os.ErrNotExist. O_NOFOLLOW and O_CLOEXEC are
// added to flags; a file created through O_CREAT gets mode 0600. Mount points
// may be crossed (OpenBeneathOneFS does not cross them). root itself is trusted
// and resolved normally.
func OpenBeneath(root, rel string, flags int) (*os.File, error) {
	return openBeneath(root, rel, flags, 0)
}

// OpenBeneathOneFS is OpenBeneath that also refuses to cross a mount point
// (RESOLVE_NO_XDEV): a component that is a mount point, or a bind mount of
// anything, fails with EXDEV, so the result is on root's own filesystem.
func OpenBeneathOneFS(root, rel string, flags int) (*os.File, error) {
	return openBeneath(root, rel, flags, unix.RESOLVE_NO_XDEV)
}

func openBeneath(root, rel string, flags int, resolve uint64) (*os.File, error) {
	name := filepath.Join(root, rel)
	rootFd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: root, Err: err}
	}
	defer unix.Close(rootFd)
	how := unix.OpenHow{
		Flags:   uint64(flags | unix.O_NOFOLLOW | unix.O_CLOEXEC),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | resolve,
	}
	if flags&unix.O_CREAT != 0 || flags&unix.O_TMPFILE == unix.O_TMPFILE {
		how.Mode = 0o600
	}
	var fd int
	for range maxOpenRetries {
		fd, err = unix.Openat2(rootFd, rel, &how)
		if err != unix.EAGAIN && err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return nil, &os.PathError{Op: "openat2", Path: name, Err: err}
	}
	if flags&unix.O_PATH != 0 {
		// O_PATH|O_NOFOLLOW yields an fd on a trailing symlink instead of an
		// error; refuse it like any other symlink.
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return nil, &os.PathError{Op: "stat", Path: name, Err: err}
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			unix.Close(fd)
			return nil, &os.PathError{Op: "openat2", Path: name, Err: unix.ELOOP}
		}
	}
	return os.NewFile(uintptr(fd), name), nil
}
