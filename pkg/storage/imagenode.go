package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/berth-csi/berth/pkg/mounter"
	"github.com/berth-csi/berth/pkg/storage/loop"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// The node side of image pools: staging records the intent, attaches the image to a
// loop device and, for a filesystem volume, formats it on first use and mounts it at
// the staging path; publish binds that mount (or the device, for a block volume).

// Stage records the intent, attaches (or finds) the loop device and mounts it. Each
// step is idempotent, so a retry after a crash between any two of them works.
func (b imageBackend) Stage(ctx context.Context, n *Node, p *Pool, r *Record, staging, rel string, c Capability) error {
	if st, err := p.Staged(r.Hash()); err != nil {
		return fmt.Errorf("read staging record: %w", err)
	} else if st != nil && st.Path != staging {
		return errorf(ErrPrecondition, "volume %s is already staged at %s", r.ID, st.Path)
	}
	if err := p.MarkStaged(r.Hash(), staging); err != nil {
		return fmt.Errorf("record staging of %s: %w", r.ID, err)
	}
	// Direct I/O: the volume's pages are cached once, by the filesystem on the
	// device, not again for the image file (docs/benchmarks.md, data path).
	dev, err := b.host.Loops.Attach(p.ImagePath(r.Hash()), loop.Options{DirectIO: true})
	if err != nil {
		return fmt.Errorf("attach %s: %w", r.ID, err)
	}
	klog.FromContext(ctx).V(4).Info("Image attached", "volumeID", r.ID, "device", dev.Path, "directIO", dev.DirectIO)
	if r.AccessType == AccessBlock {
		return nil
	}
	if err := n.prepareTarget(staging, rel, false); err != nil {
		return err
	}
	mounts := b.host.Mounts
	m, err := mounts.At(staging)
	if err != nil {
		return fmt.Errorf("read mount at %s: %w", staging, err)
	}
	if m != nil {
		if same, err := mounts.SameSource(m, dev.Path); err == nil && same || b.isDeviceMount(m, dev) {
			return nil
		}
		return errorf(ErrPrecondition, "staging_target_path %s is already a mount point of something else", staging)
	}
	// A volume restored or cloned into a larger size holds a smaller filesystem than
	// its device: grow it, offline for ext4 without CAP_SYS_RESOURCE, else once mounted.
	ext4Offline := r.FSType == "ext4" && !b.host.CanGrowMountedExt4()
	if ext4Offline {
		if err := mounts.GrowExt4Offline(dev.Path); err != nil {
			return fmt.Errorf("stage %s: %w", r.ID, err)
		}
	}
	if err := mounts.FormatAndMount(dev.Path, staging, r.FSType, c.MountFlags); err != nil {
		return fmt.Errorf("stage %s: %w", r.ID, err)
	}
	if !ext4Offline {
		if err := mounts.GrowFS(dev.Path, staging); err != nil {
			return fmt.Errorf("stage %s: %w", r.ID, err)
		}
	}
	return nil
}

// isDeviceMount reports whether mount m is the filesystem on loop device dev.
func (b imageBackend) isDeviceMount(m *mounter.MountInfo, dev *loop.Device) bool {
	major, minor, err := b.host.Loops.DevNumber(dev)
	return err == nil && m.Major == major && m.Minor == minor
}

// Unstage detaches the loop device and clears the staging record.
func (b imageBackend) Unstage(_ context.Context, _ *Node, p *Pool, r *Record) error {
	if err := b.host.Loops.DetachFile(p.ImagePath(r.Hash())); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("detach %s: %w", r.ID, err)
	}
	if err := p.ClearStaged(r.Hash()); err != nil {
		return fmt.Errorf("clear staging record of %s: %w", r.ID, err)
	}
	return nil
}

// PublishSource is the staged filesystem, or the loop device itself for a block volume.
func (b imageBackend) PublishSource(_ context.Context, _ *Node, p *Pool, r *Record, staging string) (*MountSource, error) {
	dev, err := b.host.Loops.Find(p.ImagePath(r.Hash()))
	if r.AccessType == AccessBlock {
		if err != nil {
			return nil, fmt.Errorf("find loop device of %s: %w", r.ID, err)
		}
		if dev == nil {
			return nil, errorf(ErrNotStaged, "volume %s is not staged", r.ID)
		}
		return &MountSource{Path: dev.Path, Block: true}, nil
	}
	if staging == "" {
		return nil, errorf(ErrNotStaged, "staging_target_path is required to publish image volume %s", r.ID)
	}
	m, merr := b.host.Mounts.At(staging)
	if merr != nil {
		return nil, fmt.Errorf("read mount at %s: %w", staging, merr)
	}
	if m == nil || err != nil || dev == nil || !b.isDeviceMount(m, dev) {
		return nil, errorf(ErrNotStaged, "volume %s is not staged at %s", r.ID, staging)
	}
	return &MountSource{Path: staging}, nil
}

// Shows: a publication is a mount of the filesystem on the image's loop device, or
// a bind of the device itself for a block volume.
func (b imageBackend) Shows(_ *Node, p *Pool, r *Record, m *mounter.MountInfo) (bool, error) {
	dev, err := b.host.Loops.Find(p.ImagePath(r.Hash()))
	if err != nil {
		return false, err
	}
	if dev == nil {
		return false, fmt.Errorf("volume %s is not attached to a loop device", r.ID)
	}
	if r.AccessType == AccessBlock {
		return b.host.Mounts.SameSource(m, dev.Path)
	}
	return b.isDeviceMount(m, dev), nil
}

// CanServeInline refuses inline volumes: kubelet does not stage them.
func (imageBackend) CanServeInline(p *Pool) error {
	return errorf(ErrInvalid, "ephemeral volumes cannot use image pool %s: kubelet does not stage them; use a dir or quota pool", p.cfg.Name)
}

// CheckGrow refuses, before anything changes, to grow a staged ext4 volume when the
// filesystem could not follow: the volume would be recorded larger than its
// filesystem, and a smaller retry refused as a shrink. Asking for the size the volume
// has is let through (it only finishes an interrupted expansion, if any).
func (b imageBackend) CheckGrow(_ *Node, p *Pool, r *Record, requiredBytes int64) error {
	if r.AccessType != AccessMount || r.FSType != "ext4" || alignImage(requiredBytes) <= r.CapacityBytes || b.host.CanGrowMountedExt4() {
		return nil
	}
	if dev, err := b.host.Loops.Find(p.ImagePath(r.Hash())); err != nil || dev == nil {
		return nil // not staged: nothing mounted to grow now
	}
	return ext4GrowthRefused(r)
}

func ext4GrowthRefused(r *Record) error {
	return errorf(ErrPrecondition,
		"volume %s: growing a mounted ext4 filesystem needs CAP_SYS_RESOURCE, which this driver lacks; "+
			"grant it to the node plugin's container, or use fsType xfs", r.ID)
}

// GrowOnNode makes the loop device and the staged filesystem see the grown file.
func (b imageBackend) GrowOnNode(_ context.Context, _ *Node, p *Pool, r *Record, staging string) error {
	dev, err := b.host.Loops.Find(p.ImagePath(r.Hash()))
	if err != nil {
		return fmt.Errorf("find loop device of %s: %w", r.ID, err)
	}
	if dev == nil {
		return nil // not staged: the next stage attaches the grown file
	}
	if err := b.host.Loops.SetCapacity(dev); err != nil {
		return fmt.Errorf("refresh size of %s: %w", dev.Path, err)
	}
	if r.AccessType == AccessBlock {
		return nil
	}
	if staging == "" {
		st, err := p.Staged(r.Hash())
		if err != nil || st == nil {
			return errorf(ErrNotStaged, "volume %s: staging_target_path is required to grow its filesystem", r.ID)
		}
		staging = st.Path
	}
	// The filesystem grown is the one mounted there (xfs_growfs takes the mount
	// point): it must be the volume's own.
	if m, err := b.host.Mounts.At(staging); err != nil {
		return fmt.Errorf("read mount at %s: %w", staging, err)
	} else if m == nil || !b.isDeviceMount(m, dev) {
		return errorf(ErrNotStaged, "volume %s is not staged at %s: its filesystem is not mounted there", r.ID, staging)
	}
	if err := b.host.Mounts.GrowFS(dev.Path, staging); err != nil {
		if r.FSType == "ext4" && !b.host.CanGrowMountedExt4() {
			return ext4GrowthRefused(r)
		}
		return err
	}
	return nil
}

// Stats are the mounted filesystem's figures for a filesystem volume, the device's
// size for a block volume.
func (b imageBackend) Stats(_ context.Context, _ *Node, _ *Pool, r *Record, volumePath string) (Usage, error) {
	if r.AccessType == AccessBlock {
		size, err := b.host.Loops.Size(volumePath)
		if err != nil {
			return Usage{}, fmt.Errorf("size of %s: %w", volumePath, err)
		}
		return Usage{TotalBytes: size, BytesOnly: true}, nil
	}
	return fsStats(volumePath)
}

// PathProblems reports a filesystem volume whose filesystem is full.
func (imageBackend) PathProblems(_ *Node, _ *Pool, r *Record, path string) []Problem {
	if r.AccessType != AccessMount {
		return nil
	}
	var st unix.Statfs_t
	if unix.Statfs(path, &st) == nil && full(&st) {
		return []Problem{{Kind: Degraded, Reason: "CapacityExhausted",
			Message: "the filesystem of volume " + r.ID + " is full: writes fail, or soon will"}}
	}
	return nil
}

// full reports a filesystem with (next to) no room left. Filesystems keep back blocks
// that statfs still counts as available (XFS's set-aside, ext4's margins for
// metadata), so writes fail while f_bavail is still a little above 0.
func full(st *unix.Statfs_t) bool {
	slack := min(int64(st.Blocks)*st.Bsize/100, 1<<20)
	return int64(st.Bavail)*st.Bsize <= slack || st.Ffree == 0
}

// RecoverPublications reconciles the pool's loop devices with its staging records: a
// device backing a volume that is not staged is a leftover of a stage that never
// recorded its intent (or of an unstage that crashed after clearing it) and is
// detached, so devices always match staged volumes. A device backing a volume whose
// record cannot be read is left alone (damaged.go). The mounts of a staged volume's
// device, other than its staging mount, are its publications.
func (b imageBackend) RecoverPublications(ctx context.Context, n *Node, p *Pool, mounts []*mounter.MountInfo) error {
	logger := klog.FromContext(ctx).WithValues("pool", p.Name())
	devs, err := b.host.Loops.List(filepath.Join(p.cfg.Path, volumesDir))
	if err != nil {
		return err
	}
	for _, d := range devs {
		var r *Record
		var st *Staging
		if hash, ok := imageHash(d.BackingFile); ok {
			if err := p.damagedVolume(hash); err != nil {
				// Its record cannot be read: the device may well be in use.
				logger.Info("Loop device of a volume directory without a readable record: left attached",
					"device", d.Path, "backingFile", d.BackingFile)
				continue
			}
			r, _ = p.Get(hash)
			if r != nil {
				st, _ = p.Staged(r.Hash())
			}
		}
		if r == nil || st == nil {
			if err := b.host.Loops.Detach(d); err != nil {
				logger.Error(err, "Cannot detach leftover loop device", "device", d.Path, "backingFile", d.BackingFile)
			} else {
				logger.Info("Detached leftover loop device", "device", d.Path, "backingFile", d.BackingFile)
			}
			continue
		}
		major, minor, err := b.host.Loops.DevNumber(d)
		if err != nil {
			return fmt.Errorf("device number of %s: %w", d.Path, err)
		}
		for _, m := range mounts {
			fsMount := m.Major == major && m.Minor == minor && m.Mountpoint != st.Path
			blockBind := m.FSType == "devtmpfs" && m.Root == "/"+filepath.Base(d.Path)
			if fsMount || blockBind {
				n.recovered(ctx, r, m)
			}
		}
	}
	return nil
}

// imageHash returns <hash> when backing is .../volumes/<hash>/image (the kernel
// appends " (deleted)" to a backing file that was removed). Only the last three
// components are compared: the kernel shows the path resolved from the mount
// namespace's root, which differs from the pool's configured path when that holds a
// symlink; loop.List has already kept only the files under the pool's volumes/.
func imageHash(backing string) (string, bool) {
	backing = strings.TrimSuffix(backing, " (deleted)")
	volDir, name := filepath.Split(backing)
	volDir = filepath.Clean(volDir)
	hash := filepath.Base(volDir)
	if name != ImageFile || filepath.Base(filepath.Dir(volDir)) != volumesDir || len(hash) != hashLen || !isLowerHex(hash) {
		return "", false
	}
	return hash, true
}
