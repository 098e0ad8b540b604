package storage

import (
	"context"
	"fmt"

	"github.com/berth-csi/berth/pkg/storage/meta"
	"k8s.io/klog/v2"
)

// lockRecord takes the lock of a committed volume whose record op is about to
// rewrite, and returns the record. Shared pools: every node holding the volume may be
// asked, so the lock is the pool's file lock, and temp files a crashed writer left
// beside the record are removed under it.
func (p *Pool) lockRecord(ctx context.Context, op, hash string) (*fileLock, *Record, error) {
	if err := p.usable(ctx); err != nil {
		return nil, nil, fmt.Errorf("%s volume %s: %w", op, hash, err)
	}
	if err := p.resyncing(hash); err != nil {
		return nil, nil, fmt.Errorf("%s volume %s: %w", op, hash, err)
	}
	l, err := p.tryLock(volumeLock(hash))
	if err != nil {
		return nil, nil, fmt.Errorf("%s volume %s: %w", op, hash, err)
	}
	if p.Shared() {
		removeStaleTemps(p.VolumeDir(hash)) // ours to remove, under the lock
	}
	r, err := p.get(hash)
	if err != nil {
		l.unlock()
		return nil, nil, err
	}
	return l, r, nil
}

// Expand grows a committed volume to requiredBytes (at most limitBytes when set).
// Asking for less than the volume has is ErrOutOfRange (no shrinking); asking for the
// current size again is success, and still lets the backend finish an expansion a
// crash interrupted. The caller holds the volume's lock.
func (p *Pool) Expand(ctx context.Context, hash string, requiredBytes, limitBytes int64) (*Record, error) {
	l, r, err := p.lockRecord(ctx, "expand", hash)
	if err != nil {
		return nil, err
	}
	defer l.unlock()
	switch {
	case requiredBytes < 0 || limitBytes < 0:
		return nil, fmt.Errorf("capacity_range must not be negative: %w", ErrInvalid)
	case limitBytes > 0 && requiredBytes > limitBytes:
		return nil, fmt.Errorf("required_bytes %d exceeds limit_bytes %d: %w", requiredBytes, limitBytes, ErrInvalid)
	}
	required, err := p.alignSize(requiredBytes)
	switch {
	case err != nil:
		return nil, fmt.Errorf("expand volume %s: %w", r.ID, err)
	case required < r.CapacityBytes:
		return nil, fmt.Errorf("volume %s is %d bytes; required_bytes %d would shrink it: %w", r.ID, r.CapacityBytes, requiredBytes, ErrOutOfRange)
	case limitBytes > 0 && limitBytes < r.CapacityBytes:
		return nil, fmt.Errorf("volume %s is %d bytes; limit_bytes %d would shrink it: %w", r.ID, r.CapacityBytes, limitBytes, ErrOutOfRange)
	}
	newBytes, err := p.alignSize(max(requiredBytes, r.CapacityBytes))
	if err != nil {
		return nil, fmt.Errorf("expand volume %s: %w", r.ID, err)
	}
	if limitBytes > 0 && newBytes > limitBytes {
		return nil, fmt.Errorf("volume %s grows in %d-byte steps: %d bytes exceeds limit_bytes %d: %w", r.ID, p.backend.SizeStep(), newBytes, limitBytes, ErrOutOfRange)
	}
	delta := newBytes - r.CapacityBytes
	if delta > 0 {
		if err := p.reserve(delta); err != nil {
			return nil, fmt.Errorf("expand volume %s to %d bytes: %w", r.ID, newBytes, err)
		}
	}
	volDir := p.VolumeDir(hash)
	if err := p.backend.Expand(ctx, p, r, volDir, newBytes); err != nil {
		p.release(delta)
		return nil, fmt.Errorf("expand volume %s: %w", r.ID, err)
	}
	if delta == 0 {
		return r, nil
	}
	grown := r.Clone()
	grown.CapacityBytes = newBytes
	data, err := encodeRecord(grown)
	if err == nil {
		err = meta.WriteFile(volDir, recordFile, data)
	}
	if err != nil {
		// The backing store is larger than recorded: harmless, and a retry records it.
		p.release(delta)
		return nil, fmt.Errorf("record expansion of %s: %w", r.ID, p.noSpace(stepRecord, err))
	}
	p.commit(hash, grown, delta)
	klog.FromContext(ctx).V(4).Info("Volume expanded", "volumeID", r.ID, "sizeBytes", newBytes)
	return grown.Clone(), nil
}
