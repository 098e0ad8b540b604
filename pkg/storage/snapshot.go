package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/berth-csi/berth/pkg/storage/meta"
	"github.com/berth-csi/berth/pkg/storage/safefs"
	"k8s.io/klog/v2"
)

// Snapshots live in the pool beside volumes, with their own records:
//
//	<path>/snapshots/<hash>/record.json   the snapshot's record
//	<path>/snapshots/<hash>/data|image    a copy of the source volume's data
//	<path>/snapshots/<hash>/image.anchor  a second reflink of an image (snapshotanchor.go)
//
// A snapshot is built under tmp/ and renamed into snapshots/ only when complete, so a
// snapshot that exists is ready to use, and one interrupted by a crash is rolled back
// at start-up with every other half-built entry of tmp/.
const (
	snapshotsDir   = "snapshots"
	snapshotPrefix = "s1-"
)

// Snapshot is the durable description of one snapshot.
type Snapshot struct {
	Version        int       `json:"version"`
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	Pool           string    `json:"pool"`
	SourceVolumeID string    `json:"sourceVolumeID"`
	SizeBytes      int64     `json:"sizeBytes"`
	AccessType     string    `json:"accessType"`
	FSType         string    `json:"fsType,omitempty"`
	CreatedAt      time.Time `json:"createdAt"`
	// Group is the ID of the group snapshot this snapshot was taken in (group.go),
	// absent for a snapshot of its own. Such a snapshot is deleted with its group.
	Group string `json:"group,omitempty"`
	// Backup is set for a backup: a snapshot of a shared pool whose source volume
	// is of another pool (backup.go). Absent for every other snapshot.
	Backup *BackupInfo `json:"backup,omitempty"`
	// Ready is false only in answers about a snapshot still being copied.
	Ready bool `json:"-"`
}

// Hash is the part of the ID that names the snapshot's directory.
func (s *Snapshot) Hash() string { return s.ID[len(s.ID)-hashLen:] }

// SnapshotID returns the ID of the snapshot called name in pool: s1-<pool>-<hash>.
func SnapshotID(pool, name string) string {
	return snapshotPrefix + pool + "-" + nameHash("snapshot", name)
}

// ParseSnapshotID validates a snapshot ID as strictly as a volume ID.
func ParseSnapshotID(id string) (ParsedID, error) {
	if !strings.HasPrefix(id, snapshotPrefix) {
		return ParsedID{}, fmt.Errorf("snapshot ID %q is not a Berth snapshot ID: %w", truncate(id), ErrInvalid)
	}
	return ParseVolumeID("b1-" + id[len(snapshotPrefix):])
}

// build tracks a snapshot being copied in the background.
type build struct {
	snap   *Snapshot
	cancel context.CancelFunc
	done   chan struct{}
	err    error // set before done closes
}

// snapshotState is a pool's snapshot bookkeeping.
type snapshotState struct {
	mu       sync.Mutex
	snaps    map[string]*Snapshot // committed, by hash
	building map[string]*build    // in progress, by hash
	damaged  map[string]damage    // directories without a readable record, by hash
	sync     *meta.DirSyncer
}

// copyIsFast reports whether copies in this pool are instant: it supports reflinks.
// Without them, CreateSnapshot answers at once with ready_to_use=false and copies in
// the background, and so does a create with a content source (copy.go).
func (p *Pool) copyIsFast() bool { return p.reflink.Load() }

func (p *Pool) loadSnapshots(ctx context.Context) error {
	p.snaps.sync = meta.NewDirSyncer(filepath.Join(p.cfg.Path, snapshotsDir))
	snaps, damaged, err := p.scanSnapshots(ctx)
	if err != nil {
		return err
	}
	p.logDamage(ctx, "Snapshot", damaged, nil)
	p.snaps.mu.Lock()
	defer p.snaps.mu.Unlock()
	p.snaps.damaged = damaged
	for hash, s := range snaps {
		p.snaps.snaps[hash] = s
		p.mu.Lock()
		p.allocated += s.SizeBytes
		p.mu.Unlock()
	}
	return nil
}

// scanSnapshots reads every committed snapshot's record, and returns the directories
// without a readable, matching one apart (damaged.go).
func (p *Pool) scanSnapshots(ctx context.Context) (map[string]*Snapshot, map[string]damage, error) {
	dir := filepath.Join(p.cfg.Path, snapshotsDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("pool %s: %w", p.cfg.Name, err)
	}
	snaps := make(map[string]*Snapshot, len(entries))
	damaged := map[string]damage{}
	for _, e := range entries {
		if len(e.Name()) != hashLen || !isLowerHex(e.Name()) {
			continue
		}
		s, err := p.readSnapshotAt(e.Name())
		var d *damage
		switch {
		case err == nil:
			s.Ready = true
			snaps[e.Name()] = s
		case errors.As(err, &d):
			damaged[e.Name()] = *d
		case errors.Is(err, os.ErrNotExist):
		default:
			klog.FromContext(ctx).V(4).Info("Cannot read snapshot record", "pool", p.cfg.Name, "entry", e.Name(), "err", err.Error())
		}
	}
	return snaps, damaged, nil
}

// readSnapshotAt reads the record of snapshots/<hash> and checks that it belongs
// there, with readVolume's errors.
func (p *Pool) readSnapshotAt(hash string) (*Snapshot, error) {
	dir := filepath.Join(p.cfg.Path, snapshotsDir, hash)
	s, err := readSnapshot(dir)
	if err == nil {
		if err = p.checkSnapshot(s, hash); err == nil {
			return s, nil
		}
	}
	return nil, p.classify(dir, err)
}

func readSnapshot(dir string) (*Snapshot, error) {
	data, err := os.ReadFile(filepath.Join(dir, recordFile))
	if err != nil {
		return nil, err
	}
	var s Snapshot
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("decode %s: %w", dir, err)
	}
	if s.Version != recordVersion {
		return nil, fmt.Errorf("%s: unsupported snapshot record version %d", dir, s.Version)
	}
	return &s, nil
}

// checkSnapshot makes sure a snapshot read from snapshots/<hash> belongs there (its
// ID names this pool and this hash) and that its source is a volume ID, from which
// CreateSnapshot takes the source's hash.
func (p *Pool) checkSnapshot(s *Snapshot, hash string) error {
	id, err := ParseSnapshotID(s.ID)
	if err != nil || id.Pool != p.cfg.Name || id.Hash != hash || s.Pool != p.cfg.Name {
		return fmt.Errorf("snapshot record of %q in pool %s does not match directory %s", truncate(s.ID), p.cfg.Name, hash)
	}
	if _, err := ParseVolumeID(s.SourceVolumeID); err != nil {
		return fmt.Errorf("snapshot %s: source: %w", s.ID, err)
	}
	return nil
}

// CreateSnapshot snapshots the volume with hash source. An identical earlier request
// returns the same snapshot (with its progress while it is being copied); the same
// name for another source is ErrExists. The caller holds the snapshot's lock.
func (p *Pool) CreateSnapshot(ctx context.Context, name, source string) (*Snapshot, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if err := p.usable(ctx); err != nil {
		return nil, err
	}
	id := SnapshotID(p.cfg.Name, name)
	hash := id[len(id)-hashLen:]
	// A snapshot outlives its source: a repeated request is answered from the
	// snapshot's record, also once the source volume is gone.
	ofSource := func(volumeID string) bool { return volumeID[len(volumeID)-hashLen:] == source }
	if s, err := p.existingSnapshot(name, hash, ofSource); s != nil || err != nil {
		return s, err
	}
	if err := p.damagedSnapshot(hash); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	src, err := p.get(source)
	if err != nil {
		return nil, err
	}
	if err := p.resyncing(source); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	// Shared pools: the copy holds the lock until it ends, so another host neither
	// copies the same snapshot nor rolls this copy back.
	l, err := p.tryLock(snapshotLock(hash))
	if err != nil {
		return nil, fmt.Errorf("snapshot %s of %s: %w", id, src.ID, err)
	}
	if err := p.reserve(src.CapacityBytes); err != nil {
		l.unlock()
		return nil, fmt.Errorf("snapshot %s of %s: %w", id, src.ID, err)
	}
	snap := &Snapshot{
		Version: recordVersion, ID: id, Name: name, Pool: p.cfg.Name, SourceVolumeID: src.ID,
		SizeBytes: src.CapacityBytes, AccessType: src.AccessType, FSType: src.FSType, CreatedAt: time.Now().UTC(),
	}
	if p.copyIsFast() {
		defer l.unlock()
		if err := p.buildSnapshot(ctx, snap, src); err != nil {
			p.release(snap.SizeBytes)
			return nil, err
		}
		c := *snap
		c.Ready = true
		return &c, nil
	}
	// The copy outlives the request but not the engine: Start's context ends it.
	p.buildInBackground(ctx, snap, l, func(bctx context.Context) error { return p.buildSnapshot(bctx, snap, src) })
	c := *snap
	return &c, nil
}

// buildInBackground runs run, which commits snapshot snap, on the engine's
// context (it outlives the request but not the engine), holding l and snap's
// reservation until it ends: snap is in the building set meanwhile, and an error
// is kept there for the next CreateSnapshot (existingSnapshot).
func (p *Pool) buildInBackground(ctx context.Context, snap *Snapshot, l *fileLock, run func(context.Context) error) *build {
	hash := snap.Hash()
	bctx, cancel := context.WithCancel(klog.NewContext(p.bgCtx, klog.FromContext(ctx)))
	b := &build{snap: snap, cancel: cancel, done: make(chan struct{})}
	p.snaps.mu.Lock()
	p.snaps.building[hash] = b
	p.snaps.mu.Unlock()
	p.bg.Add(1)
	go func() {
		defer p.bg.Done()
		defer close(b.done)
		defer cancel()
		defer l.unlock()
		if err := run(bctx); err != nil {
			p.release(snap.SizeBytes)
			b.err = err
			klog.FromContext(bctx).Error(err, "Snapshot copy failed", "snapshotID", snap.ID, "sourceVolumeID", snap.SourceVolumeID)
			return
		}
		p.snaps.mu.Lock()
		delete(p.snaps.building, hash)
		p.snaps.mu.Unlock()
	}()
	return b
}

// existingSnapshot answers a repeated CreateSnapshot of name (hash): the committed
// snapshot, or its progress while it is being made, when ofSource accepts its
// source volume ID; ErrExists when it does not; the error of a background build
// that failed, once (a retry then starts over). Nil, nil when there is none.
func (p *Pool) existingSnapshot(name, hash string, ofSource func(volumeID string) bool) (*Snapshot, error) {
	p.refreshSnapshot(hash)
	p.snaps.mu.Lock()
	s, committed := p.snaps.snaps[hash]
	b, inProgress := p.snaps.building[hash]
	p.snaps.mu.Unlock()
	switch {
	case committed && ofSource(s.SourceVolumeID):
		c := *s
		return &c, nil
	case committed:
		return nil, fmt.Errorf("snapshot %q exists for volume %s: %w", name, s.SourceVolumeID, ErrExists)
	case inProgress && !ofSource(b.snap.SourceVolumeID):
		return nil, fmt.Errorf("snapshot %q is being made of volume %s: %w", name, b.snap.SourceVolumeID, ErrExists)
	case inProgress:
		select {
		case <-b.done:
			// Finished with an error (success commits it): report it and let a
			// retry start over.
			p.snaps.mu.Lock()
			delete(p.snaps.building, hash)
			p.snaps.mu.Unlock()
			return nil, b.err
		default:
			c := *b.snap
			return &c, nil
		}
	}
	return nil, nil
}

// buildSnapshot copies the source under tmp/ and commits it by rename.
func (p *Pool) buildSnapshot(ctx context.Context, s *Snapshot, src *Record) (err error) {
	dir, rollback, err := p.snapshotEntry(ctx, s)
	if err != nil {
		return p.noSpace(stepBuild, fmt.Errorf("snapshot %s of %s: %w", s.ID, src.ID, err))
	}
	defer rollback(&err)
	if err := p.copyData(ctx, src, dir); err != nil {
		return p.noSpace(stepCopy, fmt.Errorf("snapshot %s of %s: %w", s.ID, src.ID, err))
	}
	return p.commitSnapshot(ctx, s, dir)
}

// snapshotEntry makes tmp/s<hash>.<random>, where snapshot s is built, and returns
// it with its rollback, to be deferred: it removes the entry when *err is set.
func (p *Pool) snapshotEntry(ctx context.Context, s *Snapshot) (string, func(*error), error) {
	tmpParent := filepath.Join(p.cfg.Path, tmpDir)
	tmpName := "s" + s.Hash() + "." + randHex()
	dir := filepath.Join(tmpParent, tmpName)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", nil, err
	}
	return dir, func(err *error) {
		if *err == nil {
			return
		}
		if rerr := safefs.RemoveTree(tmpParent, tmpName); rerr != nil {
			klog.FromContext(ctx).Error(rerr, "Cannot roll back half-built snapshot", "snapshotID", s.ID, "entry", tmpName)
		}
	}, nil
}

// commitSnapshot writes snapshot s's record into dir, its complete copy under tmp/,
// renames it into snapshots/ and makes that durable, then indexes it. The caller
// removes dir on error.
func (p *Pool) commitSnapshot(ctx context.Context, s *Snapshot, dir string) error {
	p.anchorImage(ctx, dir, s.ID)
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := meta.WriteNew(filepath.Join(dir, recordFile), data); err != nil {
		return p.noSpace(stepRecord, fmt.Errorf("snapshot %s of %s: %w", s.ID, s.SourceVolumeID, err))
	}
	if err := meta.SyncDir(dir); err != nil {
		return p.noSpace(stepRecord, fmt.Errorf("snapshot %s of %s: %w", s.ID, s.SourceVolumeID, err))
	}
	final := filepath.Join(p.cfg.Path, snapshotsDir, s.Hash())
	if err := renameNoReplace(dir, final); err != nil {
		return p.noSpace(stepRecord, fmt.Errorf("commit %s: %w", final, err))
	}
	if err := p.snaps.sync.Sync(); err != nil {
		if rerr := os.Rename(final, dir); rerr != nil {
			klog.FromContext(ctx).Error(rerr, "Cannot undo snapshot commit after failed flush", "snapshotID", s.ID)
		}
		return err
	}
	committed := *s
	committed.Ready = true
	p.snaps.mu.Lock()
	p.snaps.snaps[s.Hash()] = &committed
	p.snaps.mu.Unlock()
	p.mu.Lock()
	p.inflight -= s.SizeBytes // still allocated, now as a committed snapshot
	p.mu.Unlock()
	klog.FromContext(ctx).V(4).Info("Snapshot committed", "snapshotID", s.ID, "sourceVolumeID", s.SourceVolumeID)
	return nil
}

// Snapshot returns a committed or in-progress snapshot by hash; ErrNotReady for a
// shared pool whose mount is gone (usable).
func (p *Pool) Snapshot(hash string) (*Snapshot, error) {
	if err := p.usable(p.ctx()); err != nil {
		return nil, err
	}
	p.refreshSnapshot(hash)
	p.snaps.mu.Lock()
	defer p.snaps.mu.Unlock()
	if s, ok := p.snaps.snaps[hash]; ok {
		c := *s
		return &c, nil
	}
	if b, ok := p.snaps.building[hash]; ok {
		c := *b.snap
		return &c, nil
	}
	return nil, fmt.Errorf("snapshot %s in pool %s: %w", hash, p.cfg.Name, ErrNotFound)
}

// Snapshots lists committed and in-progress snapshots, sorted by ID.
func (p *Pool) Snapshots() []*Snapshot {
	p.refresh()
	p.snaps.mu.Lock()
	defer p.snaps.mu.Unlock()
	out := make([]*Snapshot, 0, len(p.snaps.snaps)+len(p.snaps.building))
	for _, s := range p.snaps.snaps {
		c := *s
		out = append(out, &c)
	}
	for hash, b := range p.snaps.building {
		// A copy's commit adds its snapshot to the committed set before the copy's
		// goroutine takes it out of this one: the committed entry is the answer.
		if _, committed := p.snaps.snaps[hash]; committed {
			continue
		}
		c := *b.snap
		out = append(out, &c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// DeleteSnapshot removes a snapshot (cancelling its copy if one runs); a missing one
// is success. The caller holds the snapshot's lock.
func (p *Pool) DeleteSnapshot(ctx context.Context, hash string) error {
	if err := p.usable(ctx); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", hash, err)
	}
	p.snaps.mu.Lock()
	b := p.snaps.building[hash]
	p.snaps.mu.Unlock()
	if b != nil {
		b.cancel()
		<-b.done
		p.snaps.mu.Lock()
		delete(p.snaps.building, hash)
		p.snaps.mu.Unlock()
	}
	l, err := p.tryLock(snapshotLock(hash))
	if err != nil {
		return err
	}
	defer l.unlock()
	p.refreshSnapshot(hash)
	p.snaps.mu.Lock()
	s, ok := p.snaps.snaps[hash]
	p.snaps.mu.Unlock()
	if !ok {
		if err := p.damagedSnapshot(hash); err != nil {
			return fmt.Errorf("delete snapshot %s: %w", hash, err)
		}
		return nil
	}
	if err := p.snapshotBusy(hash); err != nil {
		return err
	}
	if err := p.toTrash(filepath.Join(p.cfg.Path, snapshotsDir), hash); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	p.snaps.mu.Lock()
	delete(p.snaps.snaps, hash)
	p.snaps.mu.Unlock()
	p.mu.Lock()
	p.allocated -= s.SizeBytes
	p.mu.Unlock()
	if err := p.snaps.sync.Sync(); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", s.ID, err)
	}
	p.kickPurge()
	klog.FromContext(ctx).V(4).Info("Snapshot moved to trash", "snapshotID", s.ID)
	return nil
}

// Copying reports whether a snapshot of volume id is being copied (the volume may not
// be deleted until the copy ends).
func (p *Pool) Copying(volumeID string) bool {
	p.snaps.mu.Lock()
	defer p.snaps.mu.Unlock()
	for _, b := range p.snaps.building {
		if b.snap.SourceVolumeID == volumeID {
			select {
			case <-b.done:
			default:
				return true
			}
		}
	}
	return false
}
