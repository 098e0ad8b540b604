package quota

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Limits are the hard limits of one project. Zero means unlimited.
type Limits struct {
	// BlockHardBytes caps the space the project's files take on disk (allocated
	// blocks, not apparent sizes).
	BlockHardBytes uint64
	// InodeHard caps how many files, directories and other inodes the project
	// holds, its top directory included.
	InodeHard uint64
}

// Usage is what one project holds now, and its limits.
type Usage struct {
	// UsedBytes is the space allocated to the project's files, a multiple of
	// 512 bytes.
	UsedBytes uint64
	// UsedInodes counts the project's inodes, its top directory included.
	UsedInodes uint64
	Limits
}

// SetLimits sets the hard limits of project id on the filesystem holding path
// to l, and the soft limits to the same values, so no grace period ever
// applies: a write or create past a hard limit fails with EDQUOT. The block
// limit is sent in 512-byte basic blocks, so l.BlockHardBytes is rounded up
// to a multiple of 512; XFS rounds it further up to its block size. Existing
// usage above a new limit is kept, but nothing more can be allocated.
//
// id 0 is refused with EINVAL: it is the project of every file without one,
// and XFS takes the limits of ID 0 as the defaults of all projects. When the
// kernel refuses because project quotas are off on that filesystem, the error
// wraps ErrNotEnforced as well as the errno.
func SetLimits(path string, id uint32, l Limits) error {
	if id == 0 {
		return fmt.Errorf("set limits of project 0 on %s: project 0 holds all files without a project: %w", path, unix.EINVAL)
	}
	blocks := l.BlockHardBytes / basicBlock
	if l.BlockHardBytes%basicBlock != 0 {
		blocks++
	}
	dq := fsDiskQuota{
		Version:      fsDquotV1,
		Flags:        fsProjQuota,
		FieldMask:    fsDqBSoft | fsDqBHard | fsDqISoft | fsDqIHard,
		ID:           id,
		BlkHardLimit: blocks,
		BlkSoftLimit: blocks,
		InoHardLimit: l.InodeHard,
		InoSoftLimit: l.InodeHard,
	}
	fd, err := openFS(path)
	if err != nil {
		return fmt.Errorf("set limits of project %d on %s: %w", id, path, err)
	}
	defer unix.Close(fd)
	if err := quotactl(fd, qXSetQLim, prjQuota, id, unsafe.Pointer(&dq)); err != nil {
		if err == unix.ENOSYS || err == unix.ESRCH {
			return fmt.Errorf("set limits of project %d on %s: quotactl_fd Q_XSETQLIM: %w: %w", id, path, ErrNotEnforced, err)
		}
		return fmt.Errorf("set limits of project %d on %s: quotactl_fd Q_XSETQLIM: %w", id, path, err)
	}
	return nil
}

// Clear sets the limits of project id on the filesystem holding path back to
// zero (unlimited), which also resets its grace timers, so that a reused ID
// starts clean. Usage stays with the files that carry the ID.
func Clear(path string, id uint32) error {
	return SetLimits(path, id, Limits{})
}

// Get returns the usage and limits of project id on the filesystem holding
// path. An ID that owns nothing and has no limits reports zeros.
func Get(path string, id uint32) (Usage, error) {
	fd, err := openFS(path)
	if err != nil {
		return Usage{}, fmt.Errorf("get quota of project %d on %s: %w", id, path, err)
	}
	defer unix.Close(fd)
	var dq fsDiskQuota
	err = quotactl(fd, qXGetQuota, prjQuota, id, unsafe.Pointer(&dq))
	switch {
	case err == unix.ENOENT:
		// XFS keeps no record for an ID without usage or limits.
		return Usage{}, nil
	case err == unix.ENOSYS || err == unix.ESRCH:
		return Usage{}, fmt.Errorf("get quota of project %d on %s: quotactl_fd Q_XGETQUOTA: %w: %w", id, path, ErrNotEnforced, err)
	case err != nil:
		return Usage{}, fmt.Errorf("get quota of project %d on %s: quotactl_fd Q_XGETQUOTA: %w", id, path, err)
	}
	return Usage{
		UsedBytes:  dq.BCount * basicBlock,
		UsedInodes: dq.ICount,
		Limits: Limits{
			BlockHardBytes: dq.BlkHardLimit * basicBlock,
			InodeHard:      dq.InoHardLimit,
		},
	}, nil
}
