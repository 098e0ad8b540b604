package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/berth-csi/berth/pkg/mounter"
	"github.com/berth-csi/berth/pkg/storage/safefs"
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
func (n *Node) prepareTarget(target, rel string, block bool) error {
	parentRel := filepath.Dir(rel)
	var parent *os.File
	var err error
	if parentRel == "." {
		parent, err = os.Open(n.kubeletDir)
	} else {
		parent, err = safefs.OpenBeneath(n.kubeletDir, parentRel, unix.O_PATH|unix.O_DIRECTORY)
	}
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
	defer parent.Close()
	pfd := int(parent.Fd())
	name := filepath.Base(rel)
	var st unix.Stat_t
	err = unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		if block {
			fd, err := unix.Openat(pfd, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o640)
			if err != nil {
				return fmt.Errorf("create target_path %q: %w", target, err)
			}
			return unix.Close(fd)
		}
		if err := unix.Mkdirat(pfd, name, 0o750); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create target_path %q: %w", target, err)
		}
		return nil
	}
	if err != nil {
		if isStale(err) {
			return nil // a dead mount sits there; the caller unmounts or reports it
		}
		return fmt.Errorf("stat target_path %q: %w", target, err)
	}
	switch st.Mode & unix.S_IFMT {
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

// checkParent refuses a path whose parent directories are reached through a symlink
// (or a parent that is not a directory, as a trailing symlink may be reported):
// publish never mounts there, and following the link could unmount or remove something
// outside the kubelet dir. Any other outcome (a missing parent...) is left to the caller.
func (n *Node) checkParent(field, target, rel string) error {
	parentRel := filepath.Dir(rel)
	if parentRel == "." {
		return nil
	}
	parent, err := safefs.OpenBeneath(n.kubeletDir, parentRel, unix.O_PATH|unix.O_DIRECTORY)
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOTDIR) {
		return errorf(ErrPrecondition, "%s %q: a parent is a symlink or not a directory", field, target)
	}
	if err == nil {
		parent.Close()
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
// regular file (a block target). Never a recursive delete.
func removeTarget(target string) error {
	var st unix.Stat_t
	if err := unix.Lstat(target, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("lstat %s: %w", target, err)
	}
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		err := unix.Rmdir(target)
		if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	case st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size == 0:
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
