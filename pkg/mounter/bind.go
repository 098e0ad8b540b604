// Package mounter publishes volumes by bind mount, with plain syscalls: a
// publish is a statfs and two mount(2) calls, with no child process, so it
// costs microseconds. It also answers the questions NodePublishVolume and
// NodeUnpublishVolume ask of a target path: is it a mount point, what is
// mounted there, and is that our volume.
//
// Bind, BindBlock and Unmount need CAP_SYS_ADMIN in the caller's mount
// namespace; the others only read. Tools (format.go) is the exception to "no
// child process": it formats and grows filesystems with their own programs,
// through an injected exec.
package mounter

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Options tune a bind mount.
type Options struct {
	// ReadOnly makes the bind mount read-only.
	ReadOnly bool
	// Flags are extra MS_* flags, as returned by ParseFlags.
	Flags uintptr
}

// Bind bind-mounts the directory (or file) source onto target, which must
// exist; a mount already at target is covered, not replaced, so callers check
// IsMountPoint first. The result is always nosuid and nodev, read-only when
// o.ReadOnly is set, and carries o.Flags.
//
// The bind is made in two steps, mount(MS_BIND) then
// mount(MS_REMOUNT|MS_BIND|flags), because the kernel ignores per-mount flags
// on the first. The remount also keeps the flags of the source's own mount
// that the kernel may lock (ro, nosuid, nodev, noexec and, unless o.Flags
// choose one, the atime policy; see inheritedFlags), so a source on a noexec
// or read-only mount stays so and the remount does not fail with EPERM in a
// user namespace. If the remount fails,
// the bind is detached and the remount's error returned: Bind never leaves a
// mount with weaker flags than asked for.
func Bind(source, target string, o Options) error {
	return bind(source, target, o, unix.MS_NOSUID|unix.MS_NODEV)
}

// BindBlock bind-mounts the block device file source onto target, an existing
// regular file, as Bind does with a directory; o.ReadOnly and o.Flags apply
// the same way.
//
// The result is nosuid but, unlike Bind, not nodev: a device file on a nodev
// mount cannot be opened (EACCES), so a nodev publish would hand the pod a
// dead device. For the same reason BindBlock refuses MS_NODEV in o.Flags and a
// source on a nodev mount.
func BindBlock(source, target string, o Options) error {
	if o.Flags&unix.MS_NODEV != 0 {
		return fmt.Errorf("bind block device %s: %w", source, flagError("nodev"))
	}
	var st unix.Stat_t
	if err := unix.Stat(source, &st); err != nil {
		return &os.PathError{Op: "stat", Path: source, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return fmt.Errorf("bind block device: %s is not a block device", source)
	}
	if err := unix.Stat(target, &st); err != nil {
		return &os.PathError{Op: "stat", Path: target, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("bind block device: target %s is not a regular file", target)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(source, &sfs); err != nil {
		return &os.PathError{Op: "statfs", Path: source, Err: err}
	}
	if sfs.Flags&unix.ST_NODEV != 0 {
		return fmt.Errorf("bind block device: %s is on a nodev mount and could not be opened", source)
	}
	return bind(source, target, o, unix.MS_NOSUID)
}

// bind mounts source on target and remounts it with forced, the caller's
// flags and the flags inherited from source's mount.
func bind(source, target string, o Options, forced uintptr) error {
	flags := forced | o.Flags
	if o.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	inherited, err := inheritedFlags(source, o.Flags)
	if err != nil {
		return fmt.Errorf("bind %s on %s: %w", source, target, err)
	}
	flags |= inherited
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", source, target, err)
	}
	if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_BIND|flags, ""); err != nil {
		err = fmt.Errorf("remount bind %s on %s with flags %#x: %w", source, target, flags, err)
		if uerr := unix.Unmount(target, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); uerr != nil {
			err = errors.Join(err, fmt.Errorf("detach %s: %w", target, uerr))
		}
		return err
	}
	return nil
}
