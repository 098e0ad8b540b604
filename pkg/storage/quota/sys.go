package quota

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kernel ABI that golang.org/x/sys/unix does not define, from
// include/uapi/linux/quota.h, include/uapi/linux/dqblk_xfs.h and
// include/uapi/linux/fs.h.

// prjQuota is PRJQUOTA, the quota type of projects.
const prjQuota = 2

// maxQuotas is MAXQUOTAS, the first invalid quota type.
const maxQuotas = 3

// The XFS quota commands, XQM_CMD(n) = 'X'<<8 + n. The VFS implements them for
// every filesystem with quota support, ext4 included, so one command set
// serves both filesystems.
const (
	qXGetQuota   = 'X'<<8 + 3 // Q_XGETQUOTA: limits and usage of one ID
	qXSetQLim    = 'X'<<8 + 4 // Q_XSETQLIM: set the limits of one ID
	qXGetQStatV  = 'X'<<8 + 8 // Q_XGETQSTATV: which quota types are on
	fsQStatV1    = 1          // FS_QSTATV_VERSION1
	fsDquotV1    = 1          // FS_DQUOT_VERSION
	fsProjQuota  = 1 << 1     // FS_PROJ_QUOTA, fs_disk_quota.d_flags
	basicBlock   = 512        // the unit of the d_blk_* and d_bcount fields
	fsDqISoft    = 1 << 0     // FS_DQ_ISOFT
	fsDqIHard    = 1 << 1     // FS_DQ_IHARD
	fsDqBSoft    = 1 << 2     // FS_DQ_BSOFT
	fsDqBHard    = 1 << 3     // FS_DQ_BHARD
	fsQuotaPAcct = 1 << 4     // FS_QUOTA_PDQ_ACCT: project usage is accounted
	fsQuotaPEnfd = 1 << 5     // FS_QUOTA_PDQ_ENFD: project limits are enforced
)

// fsQfileStatV is struct fs_qfilestatv.
type fsQfileStatV struct {
	Ino      uint64
	NBlks    uint64
	NExtents uint32
	Pad      uint32
}

// fsQuotaStatV is struct fs_quota_statv (160 bytes), the answer to
// Q_XGETQSTATV.
type fsQuotaStatV struct {
	Version      int8
	Pad1         uint8
	Flags        uint16
	InCoreDQs    uint32
	UQuota       fsQfileStatV
	GQuota       fsQfileStatV
	PQuota       fsQfileStatV
	BTimeLimit   int32
	ITimeLimit   int32
	RTBTimeLimit int32
	BWarnLimit   uint16
	IWarnLimit   uint16
	RTBWarnLimit uint16
	Pad3         uint16
	Pad4         uint32
	Pad2         [7]uint64
}

// fsDiskQuota is struct fs_disk_quota (112 bytes), used by Q_XGETQUOTA and
// Q_XSETQLIM. Block fields count 512-byte basic blocks.
type fsDiskQuota struct {
	Version      int8
	Flags        int8
	FieldMask    uint16
	ID           uint32
	BlkHardLimit uint64
	BlkSoftLimit uint64
	InoHardLimit uint64
	InoSoftLimit uint64
	BCount       uint64
	ICount       uint64
	ITimer       int32
	BTimer       int32
	IWarns       uint16
	BWarns       uint16
	ITimerHi     int8
	BTimerHi     int8
	RTBTimerHi   int8
	Padding2     int8
	RTBHardLimit uint64
	RTBSoftLimit uint64
	RTBCount     uint64
	RTBTimer     int32
	RTBWarns     uint16
	Padding3     int16
	Padding4     [8]byte
}

// fsxattr is struct fsxattr (28 bytes), used by FS_IOC_FSGETXATTR and
// FS_IOC_FSSETXATTR.
type fsxattr struct {
	XFlags     uint32
	ExtSize    uint32
	NExtents   uint32
	ProjID     uint32
	CowExtSize uint32
	Pad        [8]byte
}

// fsXFlagProjInherit is FS_XFLAG_PROJINHERIT: entries created in the
// directory take its project ID (and subdirectories the flag too).
const fsXFlagProjInherit = 0x00000200

// The ioctl requests _IOR('X', 31, struct fsxattr) and _IOW('X', 32, struct
// fsxattr). Where the direction bits sit differs between architectures
// (_IOC_READ is 2<<30 on most, 2<<29 on mips, powerpc and sparc), so they are
// taken from FS_IOC_GETFLAGS (an _IOR) and FS_IOC_SETFLAGS (an _IOW), which
// x/sys defines for each architecture; both encodings keep the direction in
// the top two bits when it is a plain read or write.
const (
	iocDirMask           = 0xc0000000
	iocSizeShift         = 16
	sizeofFsxattr        = 28
	fsIocFSGetXattr uint = unix.FS_IOC_GETFLAGS&iocDirMask | sizeofFsxattr<<iocSizeShift | 'X'<<8 | 31
	fsIocFSSetXattr uint = unix.FS_IOC_SETFLAGS&iocDirMask | sizeofFsxattr<<iocSizeShift | 'X'<<8 | 32
)

// quotactl runs quotactl_fd(2) (Linux 5.14 or later) with QCMD(cmd, typ) on
// the filesystem holding fd, and returns the bare errno on failure.
func quotactl(fd int, cmd, typ, id uint32, addr unsafe.Pointer) error {
	_, _, errno := unix.Syscall6(unix.SYS_QUOTACTL_FD, uintptr(fd), uintptr(cmd<<8|typ), uintptr(id), uintptr(addr), 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// haveQuotactlFD tells whether the kernel runs quotactl_fd(2) at all, as
// opposed to answering ENOSYS because it is too old or a seccomp filter stops
// the call: a real quotactl_fd refuses an invalid quota type with EINVAL.
func haveQuotactlFD(fd int) bool {
	return quotactl(fd, qXGetQStatV, maxQuotas, 0, nil) != unix.ENOSYS
}

// ioctlFsxattr runs FS_IOC_FSGETXATTR or FS_IOC_FSSETXATTR on fd.
func ioctlFsxattr(fd int, req uint, fa *fsxattr) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(fa)))
	if errno != 0 {
		return errno
	}
	return nil
}
