package mounter

import (
	"bufio"
	"errors"
	"fmt"
	"io"
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
	// ID is the mount's ID, unique while it is mounted: the one statx(2)
	// reports as STATX_MNT_ID. Zero when unknown.
	ID int
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
//
// Where statx(2) reports the mount ID and STATX_ATTR_MOUNT_ROOT (Linux 5.8),
// the mount a lookup of target reaches is the top-most one, and At reads only
// its line; otherwise (or when target does not answer: a stale mount) it
// compares mount points with target's real path.
func At(target string) (*MountInfo, error) {
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, target, unix.AT_SYMLINK_NOFOLLOW|unix.AT_NO_AUTOMOUNT, unix.STATX_TYPE|unix.STATX_MNT_ID, &stx)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, nil
	case err == nil && stx.Mask&unix.STATX_MNT_ID != 0 && stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0:
		if stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT == 0 {
			return nil, nil
		}
		if m, err := byID(int(stx.Mnt_id)); err != nil || m != nil {
			return m, err
		}
		// Unmounted meanwhile: look again by mount point.
	}
	mp := realParent(target)
	mounts, err := readMounts(func(m *mountinfo.Info) (skip, stop bool) {
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

// byID returns the mount with the given ID, nil when there is none.
func byID(id int) (*MountInfo, error) {
	mounts, err := readMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.ID != id, m.ID == id
	})
	if err != nil || len(mounts) == 0 {
		return nil, err
	}
	return fromInfo(mounts[0]), nil
}

// fromInfo converts one parsed line of mountinfo.
func fromInfo(m *mountinfo.Info) *MountInfo {
	return &MountInfo{
		ID:         m.ID,
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
// For a directory, and a mount m that is still the top-most at its mount
// point (its ID is what statx(2) reports there), that is: m's mount point and
// dir are the same inode of the same filesystem, as a directory has a single
// path inside its filesystem. Two statx calls answer it.
//
// Otherwise dir's filesystem and path inside it are those of the mount that
// holds dir, found by the mount ID statx(2) reports (Linux 5.8), or else as the
// top-most mount at the longest mount point that prefixes dir. Both come from
// /proc/self/mountinfo, like m's, so the comparison holds on btrfs subvolumes
// too, where st_dev differs from the mount table's device number.
func SameSource(m *MountInfo, dir string) (bool, error) {
	if m == nil {
		return false, nil
	}
	var ds unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, dir, unix.AT_NO_AUTOMOUNT, unix.STATX_TYPE|unix.STATX_INO, &ds); err != nil {
		return false, &os.PathError{Op: "statx", Path: dir, Err: err}
	}
	if same, ok := sameInode(m, &ds); ok {
		return same, nil
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

// sameInode compares the root of mount m, looked up at its mount point, with the
// directory ds describes. ok is false when that answers nothing: ds is not a
// directory, m's ID is unknown, or the lookup does not reach m (m is covered by
// another mount, or gone, or does not answer).
func sameInode(m *MountInfo, ds *unix.Statx_t) (same, ok bool) {
	if m.ID == 0 || ds.Mask&unix.STATX_TYPE == 0 || ds.Mode&unix.S_IFMT != unix.S_IFDIR || ds.Mask&unix.STATX_INO == 0 {
		return false, false
	}
	var ms unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, m.Mountpoint, unix.AT_SYMLINK_NOFOLLOW|unix.AT_NO_AUTOMOUNT, unix.STATX_TYPE|unix.STATX_INO|unix.STATX_MNT_ID, &ms)
	if err != nil || ms.Mask&unix.STATX_MNT_ID == 0 || int(ms.Mnt_id) != m.ID || ms.Mask&unix.STATX_INO == 0 {
		return false, false
	}
	return ms.Dev_major == ds.Dev_major && ms.Dev_minor == ds.Dev_minor && ms.Ino == ds.Ino, true
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
	mounts, err := readMounts(filter)
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

// readMounts parses this thread's mount table, as mountinfo.GetMounts does, but
// reads the file with plain read(2) calls, 64 KiB at a time. os.Open hands a
// /proc file, which supports poll, to Go's netpoller: two fcntl and two
// epoll_ctl calls, and a wake-up of the poller thread, on every read.
func readMounts(filter mountinfo.FilterFunc) ([]*mountinfo.Info, error) {
	path := "/proc/thread-self/mountinfo"
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		// Before Linux 3.17. Go's threads share one mount namespace unless one
		// of them called setns(2), which Berth never does.
		path = "/proc/self/mountinfo"
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	return mountinfo.GetMountsFromReader(bufio.NewReaderSize(fdReader(fd), 64<<10), filter)
}

// fdReader reads a blocking file descriptor.
type fdReader int

func (r fdReader) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(int(r), p)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, err
		case n == 0 && len(p) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}
