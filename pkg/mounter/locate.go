package mounter

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Locate returns the device number of the filesystem holding dir and dir's path
// inside that filesystem: what the Root field of a bind mount of dir would show in
// /proc/self/mountinfo. It lets a caller recognise bind mounts of dir's subdirectories
// in one pass over All.
func Locate(dir string) (major, minor int, root string, err error) {
	path, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return 0, 0, "", err
	}
	if path, err = filepath.Abs(path); err != nil {
		return 0, 0, "", err
	}
	var stx unix.Statx_t
	err = unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW|unix.AT_NO_AUTOMOUNT, unix.STATX_TYPE|unix.STATX_MNT_ID, &stx)
	if err != nil {
		return 0, 0, "", &os.PathError{Op: "statx", Path: path, Err: err}
	}
	holder, err := holdingMount(path, &stx)
	if err != nil {
		return 0, 0, "", err
	}
	rel, err := filepath.Rel(holder.Mountpoint, path)
	if err != nil {
		return 0, 0, "", err
	}
	return holder.Major, holder.Minor, filepath.Join(holder.Root, rel), nil
}

// All returns every mount of this process's mount namespace.
func All() ([]*MountInfo, error) {
	mounts, err := readMounts(nil)
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	out := make([]*MountInfo, 0, len(mounts))
	for _, m := range mounts {
		out = append(out, fromInfo(m))
	}
	return out, nil
}
