package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// checkTarget validates a target path: absolute, clean, strictly under the kubelet dir,
// reached without any symlink. It returns the path relative to the kubelet dir.
func (s *Server) checkTarget(field, target string) (string, error) {
	if target == "" {
		return "", status.Errorf(codes.InvalidArgument, "%s is required", field)
	}
	if !filepath.IsAbs(target) {
		return "", status.Errorf(codes.FailedPrecondition, "%s %q must be an absolute path", field, target)
	}
	if filepath.Clean(target) != target || strings.ContainsRune(target, 0) {
		return "", status.Errorf(codes.FailedPrecondition, "%s %q must be a clean path", field, target)
	}
	rel, ok := strings.CutPrefix(target, s.cfg.KubeletDir+"/")
	if !ok || rel == "" {
		return "", status.Errorf(codes.FailedPrecondition, "%s %q is not under the kubelet directory %s", field, target, s.cfg.KubeletDir)
	}
	return rel, nil
}

// prepareTarget makes sure the target exists as a directory (mount) or a regular file
// (block), creating only its last component, and that no component is a symlink.
func (s *Server) prepareTarget(target, rel string, block bool) error {
	parentRel := filepath.Dir(rel)
	var parent *os.File
	var err error
	if parentRel == "." {
		parent, err = os.Open(s.cfg.KubeletDir)
	} else {
		parent, err = safefs.OpenBeneath(s.cfg.KubeletDir, parentRel, unix.O_PATH|unix.O_DIRECTORY)
	}
	switch {
	case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV):
		return status.Errorf(codes.FailedPrecondition, "target_path %q: a parent directory is a symlink", target)
	case errors.Is(err, os.ErrNotExist):
		return status.Errorf(codes.FailedPrecondition, "target_path %q: parent directory does not exist", target)
	case errors.Is(err, unix.ENOTDIR):
		return status.Errorf(codes.FailedPrecondition, "target_path %q: a parent is not a directory", target)
	case err != nil:
		return status.Errorf(codes.Internal, "target_path %q: %v", target, err)
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
				return status.Errorf(codes.Internal, "create target_path %q: %v", target, err)
			}
			return unix.Close(fd)
		}
		if err := unix.Mkdirat(pfd, name, 0o750); err != nil && !errors.Is(err, unix.EEXIST) {
			return status.Errorf(codes.Internal, "create target_path %q: %v", target, err)
		}
		return nil
	}
	if err != nil {
		if isStale(err) {
			return nil // a dead mount sits there; the caller unmounts or reports it
		}
		return status.Errorf(codes.Internal, "stat target_path %q: %v", target, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		return status.Errorf(codes.FailedPrecondition, "target_path %q is a symlink", target)
	case unix.S_IFDIR:
		if block {
			return status.Errorf(codes.FailedPrecondition, "target_path %q is a directory; a block volume needs a file", target)
		}
	case unix.S_IFREG:
		if !block {
			return status.Errorf(codes.FailedPrecondition, "target_path %q is a file; a mount volume needs a directory", target)
		}
	default:
		return status.Errorf(codes.FailedPrecondition, "target_path %q is neither a directory nor a file", target)
	}
	return nil
}

// checkParent refuses a target whose parent directories are reached through a symlink
// (or a parent that is not a directory, as a trailing symlink may be reported):
// publish never mounts there, and following the link could unmount or remove something
// outside the kubelet dir. Any other outcome (a missing parent...) is left to the caller.
func (s *Server) checkParent(target, rel string) error {
	parentRel := filepath.Dir(rel)
	if parentRel == "." {
		return nil
	}
	parent, err := safefs.OpenBeneath(s.cfg.KubeletDir, parentRel, unix.O_PATH|unix.O_DIRECTORY)
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOTDIR) {
		return status.Errorf(codes.FailedPrecondition, "target_path %q: a parent is a symlink or not a directory", target)
	}
	if err == nil {
		parent.Close()
	}
	return nil
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

func isStale(err error) bool {
	return errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ESTALE) || errors.Is(err, unix.EIO)
}
