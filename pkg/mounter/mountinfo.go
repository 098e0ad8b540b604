package mounter

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// ErrStale is wrapped, together with the errno, by the error IsMountPoint
// returns for a path whose mount no longer answers (ENOTCONN, ESTALE, EIO):
// a FUSE mount whose server died, an NFS mount whose export is gone.
var ErrStale = errors.New("stale mount")

// MountInfo describes one mount, as a line of /proc/self/mountinfo.
type MountInfo struct {
	// Root is the path, inside its filesystem, of the directory or file
	// mounted: "/" for a whole filesystem, a subpath for a bind mount.
	Root string
	// Source is the filesystem's source, such as a device path.
	Source string
	// FSType is the filesystem type, such as "ext4".
	FSType string
	// Mountpoint is where the mount is, relative to the process's root.
	Mountpoint string
	// Major and Minor are the filesystem's device number (st_dev).
	Major, Minor int
	// ReadOnly is true when the mount itself is read-only ("ro").
	ReadOnly bool
	// Options are the per-mount options, such as "rw,nosuid,nodev,relatime".
	Options string
	// Optional are mountinfo's optional fields, the mount's propagation:
	// "shared:2", "master:1", both, or "" for a private mount.
	Optional string
	// VFSOptions are the filesystem's (superblock) options.
	VFSOptions string
}

// At returns the top-most mount whose mount point is target, or nil, nil when
// target is not a mount point (or does not exist). target is made absolute and
// clean, and symlinks in its parent directories are resolved, as the kernel
// shows mount points by their real path; a symlink as the last element is not
// followed. At reads /proc/self/mountinfo and works on stale mounts.
func At(target string) (*MountInfo, error) {
	mp := realParent(target)
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.Mountpoint != mp, false
	})
	if err != nil {
		return nil, fmt.Errorf("read mounts at %s: %w", target, err)
	}
	top := topMost(mounts)
	if top == nil {
		return nil, nil
	}
	return fromInfo(top), nil
}

// fromInfo converts one parsed line of mountinfo.
func fromInfo(m *mountinfo.Info) *MountInfo {
	return &MountInfo{
		Root:       m.Root,
		Source:     m.Source,
		FSType:     m.FSType,
		Mountpoint: m.Mountpoint,
		Major:      m.Major,
		Minor:      m.Minor,
		ReadOnly:   slices.Contains(strings.Split(m.Options, ","), "ro"),
		Options:    m.Options,
		Optional:   m.Optional,
		VFSOptions: m.VFSOptions,
	}
}

// IsMountPoint reports whether target is the mount point of a mount,
// including a bind mount of a directory of the same filesystem (which
// st_dev comparisons such as IsLikelyNotMountPoint miss). A symlink at target
// is not followed and is never a mount point. A target that does not exist
// returns false and an error matching fs.ErrNotExist.
//
// It costs one statx(2), reading STATX_ATTR_MOUNT_ROOT; on kernels that do not
// report that attribute (before Linux 5.8) it reads /proc/self/mountinfo.
//
// If target cannot be stat'ed because a mount no longer answers, the error
// wraps ErrStale and the errno, and the result says whether a mount is at
// target itself (true: unmount it) or only above it (false), according to
// /proc/self/mountinfo.
func IsMountPoint(target string) (bool, error) {
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, target, unix.AT_SYMLINK_NOFOLLOW|unix.AT_NO_AUTOMOUNT, unix.STATX_TYPE, &stx)
	switch {
	case err == nil:
		if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 {
			return stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
		}
	case isStale(err):
		serr := fmt.Errorf("%w: statx %s: %w", ErrStale, target, err)
		m, aerr := At(target)
		if aerr != nil {
			return true, errors.Join(serr, aerr)
		}
		return m != nil, serr
	case errors.Is(err, unix.ENOSYS):
		var st unix.Stat_t
		if err := unix.Lstat(target, &st); err != nil {
			return false, &os.PathError{Op: "lstat", Path: target, Err: err}
		}
	default:
		return false, &os.PathError{Op: "statx", Path: target, Err: err}
	}
	m, err := At(target)
	return m != nil, err
}

// SameSource reports whether mount m shows dir: m is of the filesystem that
// holds dir and m's root is dir's path inside that filesystem. It tells
// whether a mount found at a target path is really the volume to publish.
// dir may also be a file, such as the device of BindBlock. A nil m returns
// false.
//
// dir's filesystem and path inside it are those of the mount that holds dir,
// found by the mount ID statx(2) reports (Linux 5.8), or else as the
// top-most mount at the longest mount point that prefixes dir. Both come from
// /proc/self/mountinfo, like m's, so the comparison holds on btrfs subvolumes
// too, where st_dev differs from the mount table's device number.
func SameSource(m *MountInfo, dir string) (bool, error) {
	if m == nil {
		return false, nil
	}
	path, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return false, err
	}
	if path, err = filepath.Abs(path); err != nil {
		return false, err
	}
	var stx unix.Statx_t
	err = unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW|unix.AT_NO_AUTOMOUNT, unix.STATX_TYPE|unix.STATX_MNT_ID, &stx)
	if err != nil {
		return false, &os.PathError{Op: "statx", Path: path, Err: err}
	}
	holder, err := holdingMount(path, &stx)
	if err != nil {
		return false, err
	}
	rel, err := filepath.Rel(holder.Mountpoint, path)
	if err != nil {
		return false, err
	}
	return holder.Major == m.Major && holder.Minor == m.Minor &&
		filepath.Join(holder.Root, rel) == filepath.Clean(m.Root), nil
}

// holdingMount returns the mount through which path, absolute and without
// symlinks, is reached; stx is path's statx.
func holdingMount(path string, stx *unix.Statx_t) (*mountinfo.Info, error) {
	var filter mountinfo.FilterFunc
	if stx.Mask&unix.STATX_MNT_ID != 0 {
		id := int(stx.Mnt_id)
		filter = func(m *mountinfo.Info) (skip, stop bool) {
			return m.ID != id, m.ID == id
		}
	} else {
		filter = func(m *mountinfo.Info) (skip, stop bool) {
			mp := m.Mountpoint
			return !(mp == "/" || path == mp || strings.HasPrefix(path, mp+"/")), false
		}
	}
	mounts, err := mountinfo.GetMounts(filter)
	if err != nil {
		return nil, fmt.Errorf("read mounts holding %s: %w", path, err)
	}
	longest := 0
	for _, m := range mounts {
		longest = max(longest, len(m.Mountpoint))
	}
	mounts = slices.DeleteFunc(mounts, func(m *mountinfo.Info) bool { return len(m.Mountpoint) != longest })
	holder := topMost(mounts)
	if holder == nil {
		return nil, fmt.Errorf("no mount holds %s", path)
	}
	return holder, nil
}

// topMost returns, of mounts sharing one mount point, the one no other is
// mounted on, or nil if mounts is empty.
func topMost(mounts []*mountinfo.Info) *mountinfo.Info {
	covered := make(map[int]bool, len(mounts))
	for _, m := range mounts {
		covered[m.Parent] = true
	}
	var top *mountinfo.Info
	for _, m := range mounts {
		if !covered[m.ID] {
			top = m
		}
	}
	return top
}

// realParent returns target absolute and clean, with symlinks resolved in its
// parent directories but not in its last element. If the parent cannot be
// resolved (it is missing, or under a stale mount), target is returned clean.
func realParent(target string) string {
	p, err := filepath.Abs(target)
	if err != nil || p == "/" {
		return filepath.Clean(target)
	}
	dir, base := filepath.Split(p)
	rdir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return p
	}
	return filepath.Join(rdir, base)
}
