package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

func init() { backends[KindDir] = func(PoolConfig, Host) Backend { return dirBackend{} } }

// DataDirMode is the mode of a new volume's data directory: writable by any user of
// the pod, as pods commonly run as non-root; kubelet applies fsGroup on top
// (fsGroupPolicy File). The pool's own directories are 0700, so no host user can reach it.
const DataDirMode = 0o777

// dirBackend serves a plain directory per volume. Capacity is accounted, not enforced:
// use the quota kind for enforced sizes.
type dirBackend struct{ localDirNode }

func (dirBackend) Check(context.Context, *Pool) error { return nil }

func (dirBackend) SupportsBlock() bool { return false }

func (dirBackend) MultiNode() bool { return false }

func (dirBackend) SizeStep() int64 { return 1 }

func (dirBackend) Params() []string { return nil }

func (dirBackend) Filesystems() []string { return nil }

func (dirBackend) Data() (string, bool) { return DataDir, true }

// Expand has nothing to grow: a dir volume's size is accounted, not enforced.
func (dirBackend) Expand(context.Context, *Pool, *Record, string, int64) error { return nil }

func (dirBackend) Release(context.Context, *Pool, *Record) error { return nil }

func (dirBackend) InUse(context.Context, *Pool, *Record, string) error { return nil }

// Full is always false: a dir volume has no enforced limit to reach.
func (dirBackend) Full(context.Context, *Pool, *Record, string) (bool, error) { return false, nil }

func (dirBackend) Build(_ context.Context, _ *Pool, _ *Record, volDir string) error {
	data := filepath.Join(volDir, DataDir)
	if err := os.Mkdir(data, DataDirMode); err != nil {
		return fmt.Errorf("mkdir %s: %w", data, err)
	}
	// Mkdir is subject to the umask; the mode is part of the contract.
	return os.Chmod(data, DataDirMode)
}

func (dirBackend) Usage(ctx context.Context, p *Pool, r *Record, volDir string) (Usage, error) {
	data := filepath.Join(volDir, DataDir)
	used, inodes, err := p.usage.measure(ctx, data)
	if err != nil {
		return Usage{}, err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(data, &st); err != nil {
		return Usage{}, fmt.Errorf("statfs %s: %w", data, err)
	}
	fsAvail := int64(st.Bavail) * st.Bsize
	avail := max(min(r.CapacityBytes-used, fsAvail), 0)
	return Usage{
		TotalBytes: r.CapacityBytes, UsedBytes: used, AvailableBytes: avail,
		TotalInodes: inodes + int64(st.Ffree), UsedInodes: inodes, AvailableInodes: int64(st.Ffree),
	}, nil
}
