package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/klog/v2"
)

// In a pool that is not shared, the in-memory index is the truth: this process is the
// only writer. In a shared pool, other hosts create, grow and delete volumes (a
// central controller creates what nodes publish), so the disk is the truth and the
// index only a cache: single lookups re-read the volume's record, listings and
// capacity rescan the pool.

// find returns the index's record of a committed volume (not a copy), or ErrNotFound.
// The caller has checked that a shared pool is usable; a volume missing from a shared
// pool is NotFound only if the pool's mount is still live (it may have gone since).
func (p *Pool) find(hash string) (*Record, error) {
	if !p.Shared() {
		if r, ok := p.lookup(hash); ok {
			return r, nil
		}
		return nil, fmt.Errorf("volume %s in pool %s: %w", hash, p.cfg.Name, ErrNotFound)
	}
	if err := p.Health(); err != nil {
		return nil, p.notServed(err)
	}
	r, err := p.readVolume(hash)
	if m, ok := p.backend.(poolMounter); ok && errors.Is(err, os.ErrNotExist) {
		if lerr := m.Live(); lerr != nil {
			return nil, p.notServed(lerr)
		}
	}
	var d *damage
	p.mu.Lock()
	defer p.mu.Unlock()
	old, had := p.index[hash]
	switch {
	case errors.As(err, &d):
		if had {
			delete(p.index, hash)
			p.allocated -= old.CapacityBytes
		}
		if _, known := p.damaged[hash]; !known {
			p.logDamage(context.Background(), "Volume", map[string]damage{hash: *d}, nil)
		}
		p.damaged[hash] = *d
		return nil, damageErr("volume", *d)
	case errors.Is(err, os.ErrNotExist) && had && onDisk(p.VolumeDir(hash)):
		// Committed by this process since the read: a commit renames, then takes
		// this lock to fill the cache (a deletion likewise, to empty it).
		return old, nil
	case err == nil && !had && !onDisk(p.VolumeDir(hash)):
		return nil, fmt.Errorf("volume %s in pool %s: %w", hash, p.cfg.Name, ErrNotFound)
	case errors.Is(err, os.ErrNotExist):
		if had {
			delete(p.index, hash)
			p.allocated -= old.CapacityBytes
		}
		delete(p.damaged, hash)
		return nil, fmt.Errorf("volume %s in pool %s: %w", hash, p.cfg.Name, ErrNotFound)
	case err != nil && had:
		// The filesystem does not answer (a dead mount): the volume is still known,
		// so health checks can say what is wrong with it.
		return old, nil
	case err != nil:
		return nil, fmt.Errorf("volume %s in pool %s: %w", hash, p.cfg.Name, err)
	}
	if had {
		p.allocated -= old.CapacityBytes
	}
	delete(p.damaged, hash)
	p.index[hash] = r
	p.allocated += r.CapacityBytes
	return r, nil
}

// refresh reloads a shared pool's index and snapshots from disk; a pool that is not
// usable, and errors, leave the cache as it was. Other pools need nothing.
func (p *Pool) refresh() {
	if !p.Shared() || p.usable(p.ctx()) != nil {
		return
	}
	if err := p.rescan(context.Background()); err != nil {
		klog.Background().V(4).Info("Cannot rescan shared pool", "pool", p.cfg.Name, "err", err.Error())
	}
}

// rescan replaces the index and the committed snapshots with what is on disk, and the
// allocation with their sum plus this process's reservations in flight.
func (p *Pool) rescan(ctx context.Context) error {
	index, damaged, err := p.scanVolumes(ctx)
	if err != nil {
		return err
	}
	snaps, damagedSnaps, err := p.scanSnapshots(ctx)
	if err != nil {
		return err
	}
	var total int64
	p.snaps.mu.Lock()
	keepRecent(p.snaps.snaps, snaps, func(h string) string { return filepath.Join(p.cfg.Path, snapshotsDir, h) })
	p.snaps.snaps = snaps
	for _, s := range snaps {
		total += s.SizeBytes
	}
	p.logDamage(ctx, "Snapshot", damagedSnaps, p.snaps.damaged)
	p.snaps.damaged = damagedSnaps
	p.snaps.mu.Unlock()
	p.mu.Lock()
	keepRecent(p.index, index, p.VolumeDir)
	for _, r := range index {
		total += r.CapacityBytes
	}
	p.index = index
	p.allocated = total + p.inflight
	p.logDamage(ctx, "Volume", damaged, p.damaged)
	p.damaged = damaged
	p.mu.Unlock()
	return nil
}

// keepRecent corrects a scan of the disk, about to replace the cache old, for what this
// process committed or deleted while the scan ran. Both change the disk first and the
// cache after, and the caller holds the cache's lock: an entry the cache has and the
// scan missed is kept if its directory (dir(hash)) exists now; one the scan found and
// the cache lacks is dropped if its directory is gone now. Without this, a listing
// racing a commit could lose a volume or snapshot until the next rescan. A directory
// that cannot be checked (a dead mount) counts as present.
func keepRecent[T any](old, scanned map[string]T, dir func(hash string) string) {
	present := func(h string) bool { return onDisk(dir(h)) }
	for h, v := range old {
		if _, ok := scanned[h]; !ok && present(h) {
			scanned[h] = v
		}
	}
	for h := range scanned {
		if _, ok := old[h]; !ok && !present(h) {
			delete(scanned, h)
		}
	}
}

// onDisk reports whether path exists; one that cannot be checked (a dead mount)
// counts as present.
func onDisk(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, os.ErrNotExist)
}

// refreshSnapshot re-reads one committed snapshot of a shared pool from disk.
func (p *Pool) refreshSnapshot(hash string) {
	if !p.Shared() || p.Health() != nil {
		return
	}
	dir := filepath.Join(p.cfg.Path, snapshotsDir, hash)
	s, err := p.readSnapshotAt(hash)
	var d *damage
	damaged := errors.As(err, &d)
	p.snaps.mu.Lock()
	old, had := p.snaps.snaps[hash]
	// A snapshot this process committed or deleted since the read: a commit (or a
	// deletion) renames, then takes this lock to fill (or empty) the cache.
	gone := had && (damaged || errors.Is(err, os.ErrNotExist) && !onDisk(dir))
	added := err == nil && !had && onDisk(dir)
	switch {
	case gone:
		delete(p.snaps.snaps, hash)
	case added:
		s.Ready = true
		p.snaps.snaps[hash] = s
	}
	switch _, known := p.snaps.damaged[hash]; {
	case damaged && !known:
		p.logDamage(context.Background(), "Snapshot", map[string]damage{hash: *d}, nil)
		fallthrough
	case damaged:
		p.snaps.damaged[hash] = *d
	case err == nil || errors.Is(err, os.ErrNotExist):
		delete(p.snaps.damaged, hash)
	}
	p.snaps.mu.Unlock()
	p.mu.Lock()
	switch {
	case gone:
		p.allocated -= old.SizeBytes
	case added:
		p.allocated += s.SizeBytes
	}
	p.mu.Unlock()
}
