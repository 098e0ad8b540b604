package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/berth-csi/berth/pkg/storage/quota"
	"golang.org/x/sys/unix"
)

// KindQuota is a directory per volume with an enforced project quota.
const KindQuota = "quota"

// ParamInodeLimit is the StorageClass parameter capping a quota volume's inodes.
const ParamInodeLimit = "inodeLimit"

func init() { backends[KindQuota] = func(PoolConfig, Host) Backend { return quotaBackend{} } }

// quotaBackend gives each volume directory its own project ID (inherited by all it
// holds) and a hard block limit equal to its capacity, on XFS or ext4 with project
// quotas enforced.
type quotaBackend struct{ localDirNode }

func (quotaBackend) SupportsBlock() bool { return false }

func (quotaBackend) MultiNode() bool { return false }

func (quotaBackend) SizeStep() int64 { return 1 }

func (quotaBackend) Params() []string { return []string{ParamInodeLimit} }

func (quotaBackend) Filesystems() []string { return nil }

func (quotaBackend) Data() (string, bool) { return DataDir, true }

// Check refuses a filesystem that would not enforce the limits: never a silent pool
// without limits.
func (quotaBackend) Check(_ context.Context, p *Pool) error {
	if err := quota.Check(p.cfg.Path); err != nil {
		return fmt.Errorf("quota pool %s cannot enforce sizes: %w (use xfs mounted with prjquota, or ext4 made with -O quota,project and mounted with prjquota)", p.cfg.Name, err)
	}
	return nil
}

// inodeLimit is the volume's inode limit: its mutable parameter when one was given,
// else its StorageClass's; 0 when neither names one.
func inodeLimit(r *Record) (uint64, error) {
	v, ok := r.param(ParamInodeLimit)
	if !ok {
		return 0, nil
	}
	return parseInodeLimit(v)
}

func parseInodeLimit(v string) (uint64, error) {
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("parameter %s=%q must be a positive integer: %w", ParamInodeLimit, v, ErrInvalid)
	}
	return n, nil
}

// MutableParams: the inode limit and the per-pod I/O limits may change after
// creation.
func (quotaBackend) MutableParams() []string { return append([]string{ParamInodeLimit}, ioParams...) }

// CheckMutable refuses an inode limit that is not a positive integer, or a bad I/O
// limit.
func (quotaBackend) CheckMutable(p *Pool, key, value string) error {
	if key != ParamInodeLimit {
		return checkIOParam(p, key, value)
	}
	_, err := parseInodeLimit(value)
	return err
}

// Modify sets the project's limits to those r records: its size and the inode limit
// of its mutable parameters. Setting the same limits again is harmless; a limit below
// the inodes in use stops new files, and removes none.
func (quotaBackend) Modify(_ context.Context, p *Pool, r *Record, _ string) error {
	inodes, err := inodeLimit(r)
	if err != nil {
		return err
	}
	return quota.SetLimits(p.cfg.Path, r.ProjectID, quota.Limits{BlockHardBytes: uint64(r.CapacityBytes), InodeHard: inodes})
}

func (quotaBackend) Build(ctx context.Context, p *Pool, r *Record, volDir string) error {
	inodes, err := inodeLimit(r)
	if err != nil {
		return err
	}
	if err := (dirBackend{}).Build(ctx, p, r, volDir); err != nil {
		return err
	}
	id, err := p.projects.allocate()
	if err != nil {
		return err
	}
	data := filepath.Join(volDir, DataDir)
	if err := quota.SetProject(data, id); err != nil {
		p.projects.free(id)
		return err
	}
	if err := quota.SetLimits(p.cfg.Path, id, quota.Limits{BlockHardBytes: uint64(r.CapacityBytes), InodeHard: inodes}); err != nil {
		p.projects.free(id)
		return err
	}
	r.ProjectID = id
	return nil
}

func (quotaBackend) Usage(_ context.Context, p *Pool, r *Record, volDir string) (Usage, error) {
	u, err := quota.Get(p.cfg.Path, r.ProjectID)
	if err != nil {
		return Usage{}, err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Join(volDir, DataDir), &st); err != nil {
		return Usage{}, fmt.Errorf("statfs %s: %w", volDir, err)
	}
	used := int64(u.UsedBytes)
	out := Usage{
		TotalBytes: r.CapacityBytes, UsedBytes: used,
		AvailableBytes: max(min(r.CapacityBytes-used, int64(st.Bavail)*st.Bsize), 0),
		UsedInodes:     int64(u.UsedInodes), AvailableInodes: int64(st.Ffree),
		TotalInodes: int64(u.UsedInodes) + int64(st.Ffree),
	}
	if u.InodeHard > 0 {
		out.TotalInodes = int64(u.InodeHard)
		out.AvailableInodes = max(min(int64(u.InodeHard)-int64(u.UsedInodes), int64(st.Ffree)), 0)
	}
	return out, nil
}

// Expand raises the hard limit; setting the same limit again is harmless.
func (quotaBackend) Expand(_ context.Context, p *Pool, r *Record, _ string, newBytes int64) error {
	inodes, err := inodeLimit(r)
	if err != nil {
		return err
	}
	return quota.SetLimits(p.cfg.Path, r.ProjectID, quota.Limits{BlockHardBytes: uint64(newBytes), InodeHard: inodes})
}

// Release clears the limits. The ID stays taken until the trash is purged: the
// deleted files still count against it.
func (quotaBackend) Release(_ context.Context, p *Pool, r *Record) error {
	if r.ProjectID == 0 {
		return nil
	}
	err := quota.Clear(p.cfg.Path, r.ProjectID)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

func (quotaBackend) InUse(context.Context, *Pool, *Record, string) error { return nil }

// dataProject reads the project a volume's data directory is charged to (projectHolder).
func (quotaBackend) dataProject(volDir string) (uint32, error) {
	id, err := quota.Project(filepath.Join(volDir, DataDir))
	if errors.Is(err, unix.ENOENT) {
		return 0, nil // no data directory: nothing is charged through it
	}
	return id, err
}

// Full reports a volume at its limit.
func (b quotaBackend) Full(ctx context.Context, p *Pool, r *Record, volDir string) (bool, error) {
	u, err := b.Usage(ctx, p, r, volDir)
	if err != nil {
		return false, err
	}
	return u.UsedBytes >= u.TotalBytes || (u.TotalInodes > 0 && u.AvailableInodes == 0), nil
}
