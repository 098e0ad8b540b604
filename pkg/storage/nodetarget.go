package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/berth-csi/berth/pkg/mounter"
	"golang.org/x/sys/unix"
)

// checkTarget validates a publish or staging path (field names it): absolute, clean,
// strictly under the kubelet directory. It returns the path relative to that
// directory; components are checked for symlinks when the path is opened.
func (n *Node) checkTarget(field, target string) (string, error) {
	if target == "" {
		return "", errorf(ErrInvalid, "%s is required", field)
	}
	if !filepath.IsAbs(target) {
		return "", errorf(ErrPrecondition, "%s %q must be an absolute path", field, truncate(target))
	}
	if filepath.Clean(target) != target || strings.ContainsRune(target, 0) {
		return "", errorf(ErrPrecondition, "%s %q must be a clean path", field, truncate(target))
	}
	rel, ok := strings.CutPrefix(target, n.kubeletDir+"/")
	if !ok || rel == "" {
		return "", errorf(ErrPrecondition, "%s %q is not under the kubelet directory %s", field, truncate(target), n.kubeletDir)
	}
	return rel, nil
}

// prepareTarget makes sure the target exists as a directory (mount) or a regular file
// (block), creating only its last component, and that no component is a symlink.
//
// It costs three syscalls when the target is new, as it is on almost every publish:
// the parent is opened (openDir), the target created in it, the parent closed. Only
// a name that already exists is stat'ed, to check what it is.
func (n *Node) prepareTarget(target, rel string, block bool) error {
	parent, err := n.openDir(filepath.Dir(rel))
	switch {
	case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV):
		return errorf(ErrPrecondition, "target_path %q: a parent directory is a symlink", target)
	case errors.Is(err, os.ErrNotExist):
		return errorf(ErrPrecondition, "target_path %q: parent directory does not exist", target)
	case errors.Is(err, unix.ENOTDIR):
		return errorf(ErrPrecondition, "target_path %q: a parent is not a directory", target)
	case err != nil:
		return fmt.Errorf("target_path %q: %w", target, err)
	}
	defer unix.Close(parent)
	name := filepath.Base(rel)
	// A name removed between a refused create and its stat is created again, once.
	for range 2 {
		created, err := createTarget(parent, name, block)
		if err != nil {
			return fmt.Errorf("create target_path %q: %w", target, err)
		}
		if created {
			return nil
		}
		var st unix.Stat_t
		err = unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			if isStale(err) {
				return nil // a dead mount sits there; the caller unmounts or reports it
			}
			return fmt.Errorf("stat target_path %q: %w", target, err)
		}
		return checkTargetType(target, st.Mode, block)
	}
	return fmt.Errorf("create target_path %q: it exists, then it does not: %w", target, unix.ENOENT)
}

// createTarget creates name in the directory parent: a directory, or an empty
// regular file for a block volume. An existing name (of any type: a symlink is not
// followed) is not an error: created is false.
func createTarget(parent int, name string, block bool) (created bool, err error) {
	if block {
		fd, err := unix.Openat(parent, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o640)
		if err == nil {
			return true, unix.Close(fd)
		}
		if errors.Is(err, unix.EEXIST) {
			return false, nil
		}
		return false, err
	}
	err = unix.Mkdirat(parent, name, 0o750)
	if errors.Is(err, unix.EEXIST) {
		return false, nil
	}
	return err == nil, err
}

// checkTargetType refuses an existing target that is not what the volume is published
// on: a directory for a mount volume, a regular file for a block volume.
func checkTargetType(target string, mode uint32, block bool) error {
	switch mode & unix.S_IFMT {
	case unix.S_IFLNK:
		return errorf(ErrPrecondition, "target_path %q is a symlink", target)
	case unix.S_IFDIR:
		if block {
			return errorf(ErrPrecondition, "target_path %q is a directory; a block volume needs a file", target)
		}
	case unix.S_IFREG:
		if !block {
			return errorf(ErrPrecondition, "target_path %q is a file; a mount volume needs a directory", target)
		}
	default:
		return errorf(ErrPrecondition, "target_path %q is neither a directory nor a file", target)
	}
	return nil
}

// maxOpenRetries bounds the retries of an openat2 that the kernel refused with
// EAGAIN (a rename or mount raced with the lookup) or that a signal interrupted.
const maxOpenRetries = 16

// openDir opens the directory rel under the kubelet directory ("." for the directory
// itself) as an O_PATH descriptor for *at calls, refusing a symlink at any component
// (ELOOP) and a component that is not a directory (ENOTDIR; O_DIRECTORY also refuses
// a trailing symlink). The kubelet directory is its real path (Node resolves it) and
// rel a clean relative path, so resolving the joined path with RESOLVE_NO_SYMLINKS
// confines it as safefs.OpenBeneath does, in one syscall instead of five: a publish
// and an unpublish each open a parent, and pay for every syscall.
func (n *Node) openDir(rel string) (int, error) {
	path := filepath.Join(n.kubeletDir, rel)
	how := unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	var err error
	for range maxOpenRetries {
		var fd int
		fd, err = unix.Openat2(unix.AT_FDCWD, path, &how)
		if err == nil {
			return fd, nil
		}
		if err != unix.EAGAIN && err != unix.EINTR {
			break
		}
	}
	return -1, &os.PathError{Op: "openat2", Path: path, Err: err}
}

// checkParent refuses a path whose parent directories are reached through a symlink
// (or a parent that is not a directory, as a trailing symlink may be reported):
// publish never mounts there, and following the link could unmount or remove something
// outside the kubelet dir. Any other outcome (a missing parent...) is left to the caller.
func (n *Node) checkParent(field, target, rel string) error {
	parentRel := filepath.Dir(rel)
	if parentRel == "." {
		return nil
	}
	parent, err := n.openDir(parentRel)
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOTDIR) {
		return errorf(ErrPrecondition, "%s %q: a parent is a symlink or not a directory", field, target)
	}
	if err == nil {
		unix.Close(parent)
	}
	return nil
}

// checkUnmountPath validates the path of an unpublish, an unstage or an expansion
// (field names it).
func (n *Node) checkUnmountPath(field, path string) error {
	rel, err := n.checkTarget(field, path)
	if err != nil {
		return err
	}
	return n.checkParent(field, path, rel)
}

// removeTarget deletes the target only when it is an empty directory or an empty
// regular file (a block target). Never a recursive delete. The directory, the usual
// case, costs one rmdir; only a target that is not a directory is stat'ed.
func removeTarget(target string) error {
	err := unix.Rmdir(target)
	switch {
	case err == nil, errors.Is(err, unix.ENOTEMPTY), errors.Is(err, unix.EEXIST), errors.Is(err, unix.ENOENT):
		return nil
	case !errors.Is(err, unix.ENOTDIR):
		return err
	}
	var st unix.Stat_t
	if err := unix.Lstat(target, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("lstat %s: %w", target, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size == 0 {
		if err := unix.Unlink(target); err != nil && !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
	return nil
}

// maxStacked bounds how many mounts stacked on one path an unmount removes.
const maxStacked = 16

// unmountAll removes every mount stacked at path, dead ones included.
func (n *Node) unmountAll(path string) error {
	m := n.e.host.Mounts
	for range maxStacked {
		mounted, err := m.IsMountPoint(path)
		if errors.Is(err, mounter.ErrStale) {
			// mounted says whether the dead mount sits at path itself.
		} else if errors.Is(err, os.ErrNotExist) {
			return nil
		} else if err != nil {
			return err
		}
		if !mounted {
			return nil
		}
		if err := m.Unmount(path); err != nil {
			return err
		}
	}
	return fmt.Errorf("more than %d mounts stacked on %s", maxStacked, path)
}

func isStale(err error) bool {
	return errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ESTALE) || errors.Is(err, unix.EIO)
}
