// Package quota caps what one directory tree may use with Linux project
// quotas, on XFS mounted with prjquota (or pquota) and on ext4 made with
// "mkfs.ext4 -O quota,project" and mounted with prjquota.
//
// A volume directory gets a project ID and the inherit flag (SetProject), so
// everything created beneath it is charged to that ID; the filesystem then
// refuses writes past the ID's limits (SetLimits). Everything goes
// through system calls, with no child process and no block device path:
// quotactl_fd(2) on an fd of the filesystem (Linux 5.14 or later) and the
// FS_IOC_FSGETXATTR and FS_IOC_FSSETXATTR ioctls. The calls need root
// (CAP_SYS_ADMIN for limits, CAP_FOWNER or ownership for project IDs).
//
// Both filesystems take the same XFS-style quota commands (Q_XGETQSTATV,
// Q_XSETQLIM, Q_XGETQUOTA), which the kernel's VFS quota layer implements for
// ext4 too. They differ in ways callers see:
//   - A write or create past a limit fails with ENOSPC on XFS (a full project
//     looks like a full filesystem) and with EDQUOT on ext4.
//   - On ext4 a process with CAP_SYS_RESOURCE is not held to the limits (the
//     VFS quota code lets it through); XFS holds everyone to them. Only
//     privileged pods, or pods granted that capability, have it.
//   - XFS rounds a block limit up to its block size (4 KiB by default); ext4
//     keeps the 512-byte multiple while mounted (it stores limits in 1 KiB
//     units on disk).
//   - ext4 gives every directory a 4 KiB block, charged to the project, where
//     XFS keeps small directories inside the inode.
//   - XFS answers a query for an ID that owns nothing and has no limits with
//     ENOENT; Get reports zeros for it, as ext4 does.
//   - ext4 made with the project feature but mounted without prjquota
//     accounts project usage and takes limits, but never enforces them; Check
//     fails there. ext4 without the feature refuses prjquota at mount time.
//
// On both, statfs(2) of a directory with the inherit flag reports the
// project's limits as the filesystem's size and inode count, so df inside a
// volume shows its quota. The filesystems need kernel support: XFS quotas
// need CONFIG_XFS_QUOTA, and mounting ext4 made with the quota feature at all
// needs CONFIG_QFMT_V2.
package quota

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrNotEnforced is wrapped by the errors of Check, and of SetLimits and Get
// when the kernel refuses them for that reason, when the filesystem does not
// enforce project quotas.
var ErrNotEnforced = errors.New("project quotas are not enforced")

// zfsSuperMagic is ZFS's f_type, which x/sys does not define.
const zfsSuperMagic = 0x2fc12fc1

// Check returns nil only when the filesystem holding path is XFS or ext4 and
// both accounts and enforces project quotas, so that limits set with
// SetLimits hold. Otherwise it returns an error that wraps ErrNotEnforced and
// names the filesystem type and what is missing, or, when path cannot be
// opened or the kernel fails the query, an error that wraps the errno.
func Check(path string) error {
	fd, err := openFS(path)
	if err != nil {
		return fmt.Errorf("check project quotas on %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return fmt.Errorf("check project quotas on %s: fstatfs: %w", path, err)
	}
	magic := uint32(st.Type)
	fs := fsName(magic)
	if magic != unix.XFS_SUPER_MAGIC && magic != unix.EXT4_SUPER_MAGIC {
		return fmt.Errorf("%s at %s does not support project quotas (only xfs and ext4 do): %w", fs, path, ErrNotEnforced)
	}
	stat := fsQuotaStatV{Version: fsQStatV1}
	err = quotactl(fd, qXGetQStatV, prjQuota, 0, unsafe.Pointer(&stat))
	switch {
	case err == unix.ENOSYS && !haveQuotactlFD(fd):
		return fmt.Errorf("%s at %s: quotactl_fd(2) is not available (it needs Linux 5.14 or later and a seccomp profile that allows it): %w: %w", fs, path, ErrNotEnforced, err)
	case err == unix.ENOSYS:
		// The filesystem has no quota of any type turned on (or, for xfs, a
		// kernel without CONFIG_XFS_QUOTA).
		stat.Flags = 0
	case err != nil:
		return fmt.Errorf("check project quotas on %s: quotactl_fd Q_XGETQSTATV: %w", path, err)
	}
	acct, enfd := stat.Flags&fsQuotaPAcct != 0, stat.Flags&fsQuotaPEnfd != 0
	switch {
	case acct && enfd:
		return nil
	case magic == unix.XFS_SUPER_MAGIC && acct:
		return fmt.Errorf("xfs at %s is not mounted with prjquota (project usage is accounted but limits are not enforced: pqnoenforce): %w", path, ErrNotEnforced)
	case magic == unix.XFS_SUPER_MAGIC:
		return fmt.Errorf("xfs at %s is not mounted with prjquota: %w", path, ErrNotEnforced)
	case acct:
		return fmt.Errorf("ext4 at %s is not mounted with prjquota (project usage is accounted but limits are not enforced): %w", path, ErrNotEnforced)
	default:
		return fmt.Errorf("ext4 at %s lacks the project quota feature (mkfs.ext4 -O quota,project) or the prjquota mount option: %w", path, ErrNotEnforced)
	}
}

// openFS opens path to name its filesystem to quotactl_fd and fstatfs.
// O_PATH needs no permission on path itself and takes any file type. A
// symlink in path is followed: path is the driver's own pool path, never one
// a pod controls.
func openFS(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open: %w", err)
	}
	return fd, nil
}

// fsName names a filesystem by its statfs f_type, for error messages.
func fsName(magic uint32) string {
	switch magic {
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.EXT4_SUPER_MAGIC: // ext2 and ext3 share it, and the ext4 driver
		return "ext4"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.RAMFS_MAGIC:
		return "ramfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	case unix.FUSE_SUPER_MAGIC:
		return "fuse"
	case unix.F2FS_SUPER_MAGIC:
		return "f2fs"
	case zfsSuperMagic:
		return "zfs"
	default:
		return fmt.Sprintf("filesystem of type %#x", magic)
	}
}
