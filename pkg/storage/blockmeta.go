package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/berth-csi/berth/pkg/storage/extents"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Changed-block tracking: which blocks of a snapshot of an image volume hold data,
// and which blocks differ between two snapshots of one image volume, read from the
// snapshots' extent maps (package extents). A snapshot of an image is a reflink
// copy of its file, so the blocks the volume has not written since share their
// physical blocks with the earlier snapshot; the rest is what changed.

// BlockRange is a byte range of a snapshot's image, in whole 4 KiB blocks.
type BlockRange = extents.Range

// BlockSize is the granularity of block ranges (4 KiB, the image granularity).
const BlockSize = extents.BlockSize

// BlockMetadata is an open listing of a snapshot's blocks: Walk reports its
// ranges. The snapshots' files are held open from the lookup to Close, so a
// deletion meanwhile does not cut the listing short.
type BlockMetadata struct {
	// SizeBytes is the size of the (target) snapshot's volume.
	SizeBytes int64
	files     []*os.File
	walk      func(ctx context.Context, emit func(BlockRange) error) (extents.Stats, error)
	what      string
	stats     extents.Stats
}

// Walk calls emit with each range in ascending order, merged where adjacent, and
// stops at emit's first error, which it returns.
func (m *BlockMetadata) Walk(ctx context.Context, emit func(BlockRange) error) error {
	st, err := m.walk(ctx, emit)
	m.stats = st
	klog.FromContext(ctx).V(4).Info("Block metadata listed", "what", m.what, "fiemapCalls", st.Calls, "extents", st.Extents,
		"sharedBytes", st.SharedBytes, "zeroBytes", st.ZeroBytes, "writtenBytes", st.WrittenBytes,
		"comparedBytes", st.ComparedBytes, "reportedBytes", st.ReportedBytes, "err", errString(err))
	return err
}

// Stats tells what the last Walk found and what it cost (FIEMAP calls, extents).
func (m *BlockMetadata) Stats() extents.Stats { return m.stats }

// Close releases the snapshots' files.
func (m *BlockMetadata) Close() error {
	var errs []error
	for _, f := range m.files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// BlockMetadataServed reports whether some pool here can answer ChangedBlocks: a
// served pool whose volumes are image files, on a filesystem with reflinks.
func (e *Engine) BlockMetadataServed() bool {
	for _, p := range e.pools {
		if p.Health() == nil && p.blockImages() && p.copyIsFast() {
			return true
		}
	}
	return false
}

// blockImages reports whether the pool's volumes are one file each, an image that
// is a block device's content (its snapshots are such files too).
func (p *Pool) blockImages() bool {
	_, isDir := p.backend.Data()
	return !isDir
}

// AllocatedBlocks opens the listing of the ranges of snapshot id's image that hold
// data, from start on. An unknown snapshot is ErrNotFound; a snapshot of a
// directory volume, or one still being copied, ErrPrecondition; a start past the
// snapshot's size (or negative) ErrOutOfRange.
func (e *Engine) AllocatedBlocks(ctx context.Context, id string, start int64) (*BlockMetadata, error) {
	p, s, err := e.imageSnapshot(id)
	if err != nil {
		return nil, err
	}
	if err := checkStart(start, s); err != nil {
		return nil, err
	}
	f, err := p.openSnapshotImage(s)
	if err != nil {
		return nil, err
	}
	return &BlockMetadata{
		SizeBytes: s.SizeBytes, files: []*os.File{f}, what: "allocated " + s.ID,
		walk: func(ctx context.Context, emit func(BlockRange) error) (extents.Stats, error) {
			st, err := extents.Allocated(ctx, f, start, s.SizeBytes, emit)
			return st, p.fiemapErr(s, err)
		},
	}, nil
}

// ChangedBlocks opens the listing of the ranges where snapshot target differs from
// snapshot base, two snapshots of one image volume, from start on, with
// AllocatedBlocks' errors; besides, snapshots of different volumes are ErrInvalid,
// and a pool whose filesystem has no reflinks (its snapshots share no block with
// each other, so the extents tell nothing) ErrPrecondition.
func (e *Engine) ChangedBlocks(ctx context.Context, baseID, targetID string, start int64) (*BlockMetadata, error) {
	p, base, err := e.imageSnapshot(baseID)
	if err != nil {
		return nil, err
	}
	_, target, err := e.imageSnapshot(targetID)
	if err != nil {
		return nil, err
	}
	if base.SourceVolumeID != target.SourceVolumeID {
		return nil, fmt.Errorf("snapshot %s is of volume %s and snapshot %s of volume %s: changes are between snapshots of one volume: %w",
			base.ID, base.SourceVolumeID, target.ID, target.SourceVolumeID, ErrInvalid)
	}
	if !p.copyIsFast() {
		return nil, errorf(ErrPrecondition, "pool %s has no reflinks: its snapshots are full copies that share no block, so changed blocks cannot be told from their extents; take a full backup", p.cfg.Name)
	}
	if err := checkStart(start, target); err != nil {
		return nil, err
	}
	fb, err := p.openSnapshotImage(base)
	if err != nil {
		return nil, err
	}
	ft, err := p.openSnapshotImage(target)
	if err != nil {
		fb.Close()
		return nil, err
	}
	return &BlockMetadata{
		SizeBytes: target.SizeBytes, files: []*os.File{fb, ft}, what: "changed " + base.ID + " " + target.ID,
		walk: func(ctx context.Context, emit func(BlockRange) error) (extents.Stats, error) {
			st, err := extents.Changed(ctx, fb, ft, start, target.SizeBytes, emit)
			return st, p.fiemapErr(target, err)
		},
	}, nil
}

// imageSnapshot looks up a committed snapshot of an image volume.
func (e *Engine) imageSnapshot(id string) (*Pool, *Snapshot, error) {
	p, hash, err := e.ResolveSnapshot(id)
	if err != nil {
		return nil, nil, err
	}
	s, err := p.Snapshot(hash)
	if err != nil {
		return nil, nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	if !p.blockImages() {
		return nil, nil, errorf(ErrPrecondition, "snapshot %s is of a directory volume (pool %s, kind %s): block metadata exists for image volumes only", id, p.cfg.Name, p.kind)
	}
	if !s.Ready {
		return nil, nil, fmt.Errorf("snapshot %s is still being copied: %w", id, ErrInProgress)
	}
	return p, s, nil
}

// checkStart: the spec's OUT_OF_RANGE is "negative or exceeds the volume size"; a
// start at the very end lists nothing.
func checkStart(start int64, s *Snapshot) error {
	if start < 0 || start > s.SizeBytes {
		return fmt.Errorf("starting offset %d is outside snapshot %s of %d bytes: %w", start, s.ID, s.SizeBytes, ErrOutOfRange)
	}
	return nil
}

// openSnapshotImage opens a committed snapshot's image for reading, refusing
// anything but a regular file.
func (p *Pool) openSnapshotImage(s *Snapshot) (*os.File, error) {
	name, _ := p.backend.Data()
	path := filepath.Join(p.cfg.Path, snapshotsDir, s.Hash(), name)
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("snapshot %s: image %s: %w", s.ID, path, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: open %s: %w", s.ID, path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", path)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("snapshot %s: %w", s.ID, err)
	}
	return f, nil
}

// fiemapErr names the filesystems that cannot map extents (no FIEMAP).
func (p *Pool) fiemapErr(s *Snapshot, err error) error {
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) {
		return errorf(ErrPrecondition, "snapshot %s: the filesystem of pool %s does not map extents (FIEMAP): %w", s.ID, p.cfg.Name, err)
	}
	return err
}
