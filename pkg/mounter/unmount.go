package mounter

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Unmount unmounts the top-most mount at target, without following a symlink
// at target (UMOUNT_NOFOLLOW). It is idempotent: a target that does not exist
// (ENOENT) or is not a mount point (EINVAL) returns nil.
//
// It unmounts one mount per call. If mounts are stacked at target, the ones
// below stay; callers that care check IsMountPoint again and call Unmount
// until it reports false.
//
// A second, lazy unmount (MNT_DETACH) is made in two cases only: the first
// unmount found the mount busy (EBUSY), or failed on a stale mount (ENOTCONN,
// ESTALE, EIO, as left by a dead FUSE server or a lost NFS server). The lazy
// unmount detaches the mount from the tree at once; processes that still hold
// files open keep them until they close them.
//
// A mount the kernel has locked in a user namespace also gives EINVAL, and is
// then taken for "not a mount point"; Berth's own mounts are never locked.
func Unmount(target string) error {
	err := unix.Unmount(target, unix.UMOUNT_NOFOLLOW)
	switch {
	case err == nil, errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
		return nil
	case errors.Is(err, unix.EBUSY), isStale(err):
		lerr := unix.Unmount(target, unix.UMOUNT_NOFOLLOW|unix.MNT_DETACH)
		if lerr == nil || errors.Is(lerr, unix.EINVAL) || errors.Is(lerr, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("unmount %s: %w; lazy unmount: %w", target, err, lerr)
	default:
		return fmt.Errorf("unmount %s: %w", target, err)
	}
}

// isStale reports whether err is one of the errors a mount whose server has
// gone returns on any access.
func isStale(err error) bool {
	return errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ESTALE) || errors.Is(err, unix.EIO)
}
