package storage

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"time"

	"github.com/berth-csi/berth/pkg/storage/meta"
	"github.com/berth-csi/berth/pkg/storage/safefs"
	"k8s.io/klog/v2"
)

// DefaultCapacityBytes is the size of a volume whose request names no size.
const DefaultCapacityBytes = 1 << 30

// CreateRequest describes a volume to create in a pool.
type CreateRequest struct {
	Name          string
	RequiredBytes int64
	LimitBytes    int64 // 0: no limit
	AccessType    string
	FSType        string
	Parameters    map[string]string
	// MutableParameters are checked by the caller (Pool.CheckMutable); nil: none.
	MutableParameters map[string]string
	Source            *Source
	Ephemeral         bool
	// Claim is recorded with the volume; it is not part of the request's identity.
	Claim *Claim
}

// size picks the capacity for a request: the required bytes, else the default bounded
// by the limit.
func (req *CreateRequest) size() (int64, error) {
	switch {
	case req.RequiredBytes < 0 || req.LimitBytes < 0:
		return 0, fmt.Errorf("capacity_range must not be negative: %w", ErrInvalid)
	case req.LimitBytes > 0 && req.RequiredBytes > req.LimitBytes:
		return 0, fmt.Errorf("required_bytes %d exceeds limit_bytes %d: %w", req.RequiredBytes, req.LimitBytes, ErrInvalid)
	case req.RequiredBytes > 0:
		return req.RequiredBytes, nil
	case req.LimitBytes > 0:
		return min(req.LimitBytes, DefaultCapacityBytes), nil
	}
	return DefaultCapacityBytes, nil
}

// matches reports whether an existing record satisfies a repeated CreateVolume.
func (req *CreateRequest) matches(r *Record) bool {
	fits := r.CapacityBytes >= req.RequiredBytes && (req.LimitBytes == 0 || r.CapacityBytes <= req.LimitBytes)
	sameSource := (r.ContentSource == nil) == (req.Source == nil) &&
		(r.ContentSource == nil || *r.ContentSource == *req.Source)
	// No filesystem asked of a copy: its source's, whichever that was (a source
	// pulled from another node is known only once it is here).
	sameFS := r.FSType == req.FSType || (req.FSType == "" && req.Source != nil && req.AccessType == AccessMount)
	return r.Name == req.Name && fits && sameSource && r.AccessType == req.AccessType &&
		sameFS && r.Ephemeral == req.Ephemeral && maps.Equal(r.Parameters, req.Parameters) &&
		maps.Equal(r.MutableParameters, req.MutableParameters)
}

func validVolumeName(name string, ephemeral bool) error {
	if ephemeral {
		id, ok := cutEphemeral(name)
		if !ok {
			return fmt.Errorf("ephemeral volume name %q lacks its prefix: %w", truncate(name), ErrInvalid)
		}
		name = id
	}
	return ValidateName(name)
}

// Create makes the volume, or returns the existing one when an identical request was
// already served (ErrExists when the existing one differs). The caller holds the lock
// for the volume's ID. Creation is reserve -> build in tmp/ -> commit by rename.
//
// A content source this pool cannot reflink is copied in the background (copy.go):
// a copy that does not end within a short wait answers ErrInProgress, and so does
// every repeated request while it runs; the first one after it ends gets the volume,
// or the copy's error.
func (p *Pool) Create(ctx context.Context, req CreateRequest) (*Record, error) {
	if err := validVolumeName(req.Name, req.Ephemeral); err != nil {
		return nil, err
	}
	if err := p.Health(); err != nil {
		return nil, p.notServed(err)
	}
	if err := p.usable(ctx); err != nil {
		return nil, err
	}
	if req.AccessType == AccessBlock && !p.backend.SupportsBlock() {
		return nil, fmt.Errorf("pool %s (kind %s) cannot serve block volumes: %w", p.cfg.Name, p.kind, ErrUnsupported)
	}
	size, err := req.size()
	if err != nil {
		return nil, err
	}
	if size, err = p.alignSize(size); err != nil {
		return nil, err
	}
	if req.LimitBytes > 0 && size > req.LimitBytes {
		// Rounded up past the limit: the step below still serves a request whose
		// required bytes it holds (one that named only a limit).
		if size -= p.backend.SizeStep(); size < max(req.RequiredBytes, 1) {
			return nil, fmt.Errorf("pool %s allocates in %d-byte steps: none lies within [%d, %d] bytes: %w",
				p.cfg.Name, p.backend.SizeStep(), req.RequiredBytes, req.LimitBytes, ErrOutOfRange)
		}
	}
	id := VolumeID(p.cfg.Name, req.Name)
	hash := id[len(id)-hashLen:]
	// Before the lock, which a background copy holds.
	if err := p.copyAnswer(hash, &req); err != nil {
		return nil, err
	}
	// Shared pools: held until the volume is committed or rolled back (by the
	// background copy, when one takes it over).
	l, err := p.tryLock(volumeLock(hash))
	if err != nil {
		return nil, fmt.Errorf("create volume %s: %w", id, err)
	}
	unlock := l.unlock
	defer func() {
		if unlock != nil {
			unlock()
		}
	}()
	if r, err := p.find(hash); err == nil {
		if !req.matches(r) {
			return nil, fmt.Errorf("volume %q (%s) exists with different capacity, parameters or source: %w", req.Name, id, ErrExists)
		}
		return r.Clone(), nil
	} else if !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("create volume %s: %w", id, err)
	}
	if err := p.damagedVolume(hash); err != nil {
		return nil, fmt.Errorf("create volume %s: %w", id, err)
	}
	var pullFrom Peer
	if err := p.checkSource(&req, size); err != nil {
		if pullFrom, err = p.locateSource(ctx, &req, err); err != nil {
			return nil, fmt.Errorf("create volume %s: %w", id, err)
		}
	}
	if err := p.reserve(size); err != nil {
		return nil, fmt.Errorf("create volume %s of %d bytes: %w", id, size, err)
	}
	// Clone: the index must not share the request's Parameters or Source.
	r := (&Record{
		Version: recordVersion, ID: id, Name: req.Name, Pool: p.cfg.Name, CapacityBytes: size,
		AccessType: req.AccessType, FSType: req.FSType, Parameters: req.Parameters,
		MutableParameters: req.MutableParameters, ContentSource: req.Source, Ephemeral: req.Ephemeral, CreatedAt: time.Now().UTC(),
		Claim: req.Claim, pullFrom: pullFrom, fsTypeOpen: pullFrom.Node != "" && req.FSType == "" && req.AccessType == AccessMount,
	}).Clone()
	if r.ContentSource != nil && (!p.copyIsFast() || pullFrom.Node != "" || p.fromSharedPool(r.ContentSource)) {
		unlock = nil
		return p.copyInBackground(ctx, r, size, l)
	}
	if err := p.build(ctx, r, hash, nil); err != nil {
		p.release(size)
		return nil, fmt.Errorf("create volume %s: %w", id, err)
	}
	p.commit(hash, r, size)
	klog.FromContext(ctx).V(4).Info("Volume committed", "volumeID", id, "pool", p.cfg.Name)
	return r.Clone(), nil
}

// build creates the volume under tmp/, writes its record and commits it durably.
// progress, when not nil, is told the bytes of the content source copied so far.
func (p *Pool) build(ctx context.Context, r *Record, hash string, progress func(int64)) (err error) {
	tmpParent := filepath.Join(p.cfg.Path, tmpDir)
	tmpName := hash + "." + randHex()
	dir := filepath.Join(tmpParent, tmpName)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return p.noSpace(stepBuild, err)
	}
	defer func() {
		if err == nil {
			return
		}
		if rerr := safefs.RemoveTree(tmpParent, tmpName); rerr != nil {
			klog.FromContext(ctx).Error(rerr, "Cannot roll back half-built volume", "entry", tmpName)
			return // its project ID stays taken while its files may remain
		}
		if r.ProjectID != 0 {
			if rerr := p.backend.Release(ctx, p, r); rerr != nil {
				klog.FromContext(ctx).Error(rerr, "Cannot release half-built volume", "entry", tmpName)
			}
			p.projects.free(r.ProjectID)
		}
	}()
	if err := p.backend.Build(ctx, p, r, dir); err != nil {
		return p.noSpace(stepBuild, err)
	}
	if r.ContentSource != nil {
		if err := p.fill(ctx, r, dir, progress); err != nil {
			return p.noSpace(stepCopy, fmt.Errorf("copy %s %s: %w", r.ContentSource.Kind, r.ContentSource.ID, err))
		}
	}
	data, err := encodeRecord(r)
	if err != nil {
		return err
	}
	if err := meta.WriteNew(filepath.Join(dir, recordFile), data); err != nil {
		return p.noSpace(stepRecord, err)
	}
	if err := meta.SyncDir(dir); err != nil {
		return p.noSpace(stepRecord, err)
	}
	final := p.VolumeDir(hash)
	if err := renameNoReplace(dir, final); err != nil {
		return p.noSpace(stepRecord, fmt.Errorf("commit %s: %w", final, err))
	}
	// From here the volume exists; a failed flush still reports an error, and the
	// directory is taken back out so the caller's rollback matches what it returns.
	if err := p.volSync.Sync(); err != nil {
		if rerr := os.Rename(final, dir); rerr != nil {
			klog.FromContext(ctx).Error(rerr, "Cannot undo commit after failed flush", "volumeID", r.ID)
		}
		return err
	}
	return nil
}

func (p *Pool) reserve(size int64) error {
	available, maxVolume, err := p.capacity()
	if err != nil {
		return err
	}
	if size > maxVolume {
		return fmt.Errorf("pool %s holds at most %d bytes per volume: %w", p.cfg.Name, maxVolume, ErrOutOfRange)
	}
	if size > available {
		return fmt.Errorf("pool %s has %d bytes free: %w", p.cfg.Name, available, ErrNoSpace)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.cfg.Overcommit && p.allocated+size > maxVolume {
		return fmt.Errorf("pool %s has %d bytes free: %w", p.cfg.Name, max(maxVolume-p.allocated, 0), ErrNoSpace)
	}
	p.allocated += size
	p.inflight += size
	return nil
}

// release gives back a reservation that was not committed.
func (p *Pool) release(size int64) {
	p.mu.Lock()
	p.allocated -= size
	p.inflight -= size
	p.mu.Unlock()
}

// commit turns a reservation of reserved bytes into the committed record r (which
// may replace an earlier record of the same volume).
func (p *Pool) commit(hash string, r *Record, reserved int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.allocated -= reserved
	p.inflight -= reserved
	if old, ok := p.index[hash]; ok {
		p.allocated -= old.CapacityBytes
	}
	p.index[hash] = r
	p.allocated += r.CapacityBytes
}

func (p *Pool) lookup(hash string) (*Record, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.index[hash]
	return r, ok
}

// Get returns a copy of the record of a committed volume, or ErrNotFound; ErrNotReady
// for a shared pool whose mount is gone (usable).
func (p *Pool) Get(hash string) (*Record, error) {
	if err := p.usable(p.ctx()); err != nil {
		return nil, err
	}
	return p.get(hash)
}

// get is Get once the pool is known usable.
func (p *Pool) get(hash string) (*Record, error) {
	r, err := p.find(hash)
	if err != nil {
		return nil, err
	}
	return r.Clone(), nil
}

// Delete removes a volume: an atomic rename into the trash, made durable before it
// returns, then a background purge. Deleting a missing volume succeeds. The caller holds
// the volume's lock and has checked that it is not published (Engine.DeleteVolume does).
func (p *Pool) Delete(ctx context.Context, hash string) error {
	if err := p.usable(ctx); err != nil {
		return fmt.Errorf("delete volume %s: %w", hash, err)
	}
	// A copy still running for this volume is stopped and rolled back first.
	if err := p.cancelCopy(ctx, hash); err != nil {
		return err
	}
	// So is a resync (resync.go).
	if err := p.cancelResync(ctx, hash); err != nil {
		return err
	}
	l, err := p.tryLock(volumeLock(hash))
	if err != nil {
		return fmt.Errorf("delete volume %s: %w", hash, err)
	}
	defer l.unlock()
	r, err := p.find(hash)
	if errors.Is(err, ErrNotFound) {
		if err := p.damagedVolume(hash); err != nil {
			return fmt.Errorf("delete volume %s: %w", hash, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete volume %s: %w", hash, err)
	}
	if p.Copying(r.ID) {
		return fmt.Errorf("delete volume %s: a snapshot of it is being copied: %w", r.ID, ErrInUse)
	}
	if to, ok := p.copyingFrom(SourceVolume, r.ID); ok {
		return fmt.Errorf("delete volume %s: volume %s is being cloned from it: %w", r.ID, to, ErrInUse)
	}
	if p.exporting(r.ID) {
		return fmt.Errorf("delete volume %s: it is being sent to another node: %w", r.ID, ErrInUse)
	}
	if p.backingUp(r.ID) {
		return fmt.Errorf("delete volume %s: a backup of it is being made: %w", r.ID, ErrInUse)
	}
	if err := p.backend.InUse(ctx, p, r, p.VolumeDir(hash)); err != nil {
		return fmt.Errorf("delete volume %s: %w", r.ID, err)
	}
	// Already gone from volumes/ (removed by hand): still drop it from the index.
	if err := p.toTrash(filepath.Join(p.cfg.Path, volumesDir), hash); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	p.mu.Lock()
	delete(p.index, hash)
	delete(p.observed, hash)
	p.allocated -= r.CapacityBytes
	p.mu.Unlock()
	p.usage.forget(p.DataPath(hash))
	if err := p.volSync.Sync(); err != nil {
		return fmt.Errorf("delete volume %s: %w", r.ID, err)
	}
	p.kickPurge()
	if err := p.backend.Release(ctx, p, r); err != nil {
		// The volume is gone; what is left is a limit on an unused ID, reset on reuse.
		klog.FromContext(ctx).Error(err, "Cannot release volume resources", "volumeID", r.ID)
	}
	klog.FromContext(ctx).V(4).Info("Volume moved to trash", "volumeID", r.ID)
	return nil
}

// Usage measures a committed volume.
func (p *Pool) Usage(ctx context.Context, hash string) (Usage, error) {
	r, err := p.Get(hash)
	if err != nil {
		return Usage{}, err
	}
	return p.backend.Usage(ctx, p, r, p.VolumeDir(hash))
}

// Records returns copies of all committed volumes' records.
func (p *Pool) Records() []*Record {
	p.refresh()
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*Record, 0, len(p.index))
	for _, r := range p.index {
		out = append(out, r.Clone())
	}
	return out
}
