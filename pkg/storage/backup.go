package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/berth-csi/berth/pkg/storage/clone"
	"github.com/berth-csi/berth/pkg/storage/extents"
	"github.com/berth-csi/berth/pkg/storage/safefs"
	"k8s.io/klog/v2"
)

// Backups are snapshots kept in a shared pool of volumes of another pool (a
// node-local one): the node's copy survives the node. A backup is an ordinary
// snapshot of the shared pool (s1-<shared pool>-<hash>, snapshots/<hash>/) whose
// record says so (Snapshot.Backup) and names its source volume, of the other pool.
// What it holds:
//
//	data/                 a directory volume's tree; files unchanged since the
//	                      previous backup of the same volume are hard links of its
//	                      files (clone.Options.Base)
//	chunks/<index>        an image cut into chunks of backupChunkSize bytes; a chunk
//	                      of zeros or holes is absent, an unchanged one is a hard
//	                      link of the previous backup's (backupimage.go)
//	chunks.json           the image's size and each chunk's SHA-256
//
// Any node serving the shared pool restores it into any pool of its kind's shape
// (restore.go: sourceOf), also once the source's node is gone.
const (
	BackupTree   = "tree"
	BackupChunks = "chunks"
)

// BackupInfo is what a backup's record says besides an ordinary snapshot's.
type BackupInfo struct {
	// SourcePool is the pool of the source volume (SourceVolumeID names it too).
	SourcePool string `json:"sourcePool"`
	// Format is BackupTree or BackupChunks.
	Format string `json:"format"`
	// Base is the earlier backup of the same volume this one was made
	// incremental against: what did not change is linked from it. Empty for a
	// full backup.
	Base string `json:"base,omitempty"`
	// WrittenBytes were copied to the shared pool, LinkedBytes linked from Base.
	WrittenBytes int64 `json:"writtenBytes"`
	LinkedBytes  int64 `json:"linkedBytes"`
	// UnreadBytes of an image's chunks were linked without being read: their
	// extents were shared with the previous backup's copy (backupbase.go).
	UnreadBytes int64 `json:"unreadBytes,omitempty"`
}

// CreateBackup backs the volume srcHash of pool src up into this pool, a shared
// one, as the snapshot called name. The source is copied first within its own
// pool (a reflink where it has them, at once: the backup's instant), then into this
// pool in the background; the call waits for that a little (copyWait) and answers
// with the snapshot, not ready until it is committed. Repeated calls answer as
// CreateSnapshot's do. The caller holds the snapshot's and the source's locks.
func (p *Pool) CreateBackup(ctx context.Context, name string, src *Pool, srcHash string) (*Snapshot, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if !p.Shared() {
		return nil, errorf(ErrInvalid, "backup pool %s is a %s pool: backups go to a shared pool, which every node mounts", p.cfg.Name, p.kind)
	}
	if src == p {
		return nil, errorf(ErrInvalid, "volume is in the backup pool %s itself: take a snapshot without backupPool", p.cfg.Name)
	}
	if src.Shared() {
		return nil, errorf(ErrInvalid, "volume is in pool %s, a shared pool that every node reaches already: take a snapshot without backupPool", src.cfg.Name)
	}
	if err := p.usable(ctx); err != nil {
		return nil, err
	}
	id := SnapshotID(p.cfg.Name, name)
	hash := id[len(id)-hashLen:]
	srcID := idPrefix + src.cfg.Name + "-" + srcHash
	if s, err := p.existingSnapshot(name, hash, func(v string) bool { return v == srcID }); s != nil || err != nil {
		return s, err
	}
	if err := p.damagedSnapshot(hash); err != nil {
		return nil, fmt.Errorf("backup %s: %w", id, err)
	}
	rec, err := src.get(srcHash)
	if err != nil {
		return nil, err
	}
	if err := src.resyncing(srcHash); err != nil {
		return nil, fmt.Errorf("backup %s: %w", id, err)
	}
	format := BackupTree
	if _, isDir := src.backend.Data(); !isDir {
		format = BackupChunks
	}
	l, err := p.tryLock(snapshotLock(hash))
	if err != nil {
		return nil, fmt.Errorf("backup %s of %s: %w", id, rec.ID, err)
	}
	if err := p.reserve(rec.CapacityBytes); err != nil {
		l.unlock()
		return nil, fmt.Errorf("backup %s of %s: %w", id, rec.ID, err)
	}
	snap := &Snapshot{
		Version: recordVersion, ID: id, Name: name, Pool: p.cfg.Name, SourceVolumeID: rec.ID,
		SizeBytes: rec.CapacityBytes, AccessType: rec.AccessType, FSType: rec.FSType,
		Backup: &BackupInfo{SourcePool: src.cfg.Name, Format: format},
	}
	// The instant of the backup: a reflink copy now, where the source's pool has
	// them; elsewhere a full copy in the background (as its own snapshots are).
	var pit *pointInTime
	if src.copyIsFast() {
		if pit, err = src.pointInTime(ctx, rec); err != nil {
			p.release(rec.CapacityBytes)
			l.unlock()
			return nil, fmt.Errorf("backup %s of %s: %w", id, rec.ID, err)
		}
	}
	snap.CreatedAt = time.Now().UTC()
	src.hold(rec.ID, +1) // the source is not deleted while it is read
	b := p.buildInBackground(ctx, snap, l, func(bctx context.Context) error {
		defer src.hold(rec.ID, -1)
		return p.buildBackup(bctx, snap, src, rec, pit)
	})
	if ended(ctx, b.done) {
		return p.existingSnapshot(name, hash, func(v string) bool { return v == srcID })
	}
	c := *snap
	return &c, nil
}

// hold counts the backups of volume id being made, which keep it from being
// deleted (Delete: backingUp).
func (p *Pool) hold(id string, n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.backups[id] += n; p.backups[id] <= 0 {
		delete(p.backups, id)
	}
}

// backingUp reports whether a backup of volume id is being made.
func (p *Pool) backingUp(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.backups[id] > 0
}

// buildBackup copies the point-in-time copy pit (made now when nil) of volume rec
// of pool src into this pool's tmp/, incrementally against the latest earlier
// backup of the same volume, and commits it as snapshot s.
func (p *Pool) buildBackup(ctx context.Context, s *Snapshot, src *Pool, rec *Record, pit *pointInTime) (err error) {
	logger := klog.FromContext(ctx).WithValues("snapshotID", s.ID, "sourceVolumeID", rec.ID)
	if pit == nil {
		if pit, err = src.pointInTime(ctx, rec); err != nil {
			return fmt.Errorf("backup %s of %s: %w", s.ID, rec.ID, err)
		}
	}
	defer pit.remove(ctx)
	dir, rollback, err := p.snapshotEntry(ctx, s)
	if err != nil {
		return p.noSpace(stepBuild, fmt.Errorf("backup %s of %s: %w", s.ID, rec.ID, err))
	}
	defer rollback(&err)
	// The snapshot answered meanwhile is s: its backup details are filled in on
	// a copy, committed.
	info := *s.Backup
	prev := p.latestBackup(rec.ID, info.Format)
	var prevDir string
	if prev != nil {
		prevDir = filepath.Join(p.cfg.Path, snapshotsDir, prev.Hash())
		info.Base = prev.ID
	}
	start := time.Now()
	switch info.Format {
	case BackupTree:
		o := clone.Options{Reflink: clone.Never, Specials: clone.Recreate}
		if prev != nil {
			o.Base = filepath.Join(prevDir, "data")
		}
		st, cerr := clone.Tree(ctx, pit.path, dir, "data", o)
		err = cerr
		info.WrittenBytes, info.LinkedBytes = st.BytesCopied, st.BytesLinked
	default:
		var changed [][]extents.Range
		if prev != nil {
			if base := src.backupBase(rec, prev.ID); base != nil {
				var est extents.Stats
				changed, est, err = changedChunks(ctx, base, pit.path, backupChunkSize)
				base.Close()
				if err != nil {
					logger.Error(err, "Reading the whole image instead")
					changed = nil
				}
				logger.V(4).Info("Compared with the previous backup's copy", "sharedBytes", est.SharedBytes, "changedBytes", est.WrittenBytes)
			}
		}
		var st chunkStats
		st, err = writeChunks(ctx, pit.path, dir, prevDir, changed)
		info.WrittenBytes, info.LinkedBytes, info.UnreadBytes = st.written, st.linked, st.unread
	}
	if err != nil {
		return p.noSpace(stepCopy, fmt.Errorf("backup %s of %s: %w", s.ID, rec.ID, err))
	}
	if err := syncFS(dir); err != nil {
		return p.noSpace(stepCopy, fmt.Errorf("backup %s of %s: %w", s.ID, rec.ID, err))
	}
	done := *s
	done.Backup = &info
	if err := p.commitSnapshot(ctx, &done, dir); err != nil {
		return err
	}
	if info.Format == BackupChunks {
		src.keepBase(ctx, rec, pit, done.ID)
	}
	logger.V(2).Info("Backup committed", "base", info.Base, "writtenBytes", info.WrittenBytes,
		"linkedBytes", info.LinkedBytes, "unreadBytes", info.UnreadBytes, "duration", time.Since(start))
	return nil
}

// latestBackup is the newest committed backup of volume id in this pool, in
// format, nil when there is none.
func (p *Pool) latestBackup(id, format string) *Snapshot {
	var latest *Snapshot
	for _, s := range p.Snapshots() {
		if s.Ready && s.Backup != nil && s.SourceVolumeID == id && s.Backup.Format == format &&
			(latest == nil || s.CreatedAt.After(latest.CreatedAt)) {
			latest = s
		}
	}
	return latest
}

// pointInTime is a copy of a volume's data within its own pool, under tmp/, that
// a backup reads while the volume goes on being written.
type pointInTime struct {
	pool        *Pool
	entry, path string // its tmp/ entry; its data directory or image file
	reserved    int64  // the room it holds in the pool (a full copy's)
}

// pointInTime copies volume r into tmp/p<hash>.<random> (copyData: a reflink
// where the pool has them, the staged filesystem frozen for the copy). A crash
// leaves the entry to start-up's rollback of tmp/.
func (p *Pool) pointInTime(ctx context.Context, r *Record) (*pointInTime, error) {
	entry := "p" + r.Hash() + "." + randHex()
	dir := filepath.Join(p.cfg.Path, tmpDir, entry)
	pt := &pointInTime{pool: p, entry: entry}
	if !p.copyIsFast() {
		// A full copy takes room until the backup ends.
		if err := p.reserve(r.CapacityBytes); err != nil {
			return nil, err
		}
		pt.reserved = r.CapacityBytes
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		pt.remove(ctx)
		return nil, p.noSpace(stepBuild, err)
	}
	if err := p.copyData(ctx, r, dir); err != nil {
		pt.remove(ctx)
		return nil, p.noSpace(stepCopy, err)
	}
	name, _ := p.backend.Data()
	pt.path = filepath.Join(dir, name)
	return pt, nil
}

// remove deletes the copy and gives back its room.
func (pt *pointInTime) remove(ctx context.Context) {
	p := pt.pool
	if err := safefs.RemoveTree(filepath.Join(p.cfg.Path, tmpDir), pt.entry); err != nil && !os.IsNotExist(err) {
		klog.FromContext(ctx).Error(err, "Cannot remove a backup's point-in-time copy; start-up rolls it back", "pool", p.cfg.Name, "entry", pt.entry)
	}
	p.release(pt.reserved)
	pt.reserved = 0
}

// sharedSnapshotSource resolves a restore's source snapshot that lies in another
// pool of this engine (pid.Pool): a shared pool's snapshot, typically a backup,
// which every node can read. Its data must be of this pool's shape: a tree for
// directory kinds, a chunked image for image pools. Anything else is ErrInvalid.
func (p *Pool) sharedSnapshotSource(src *Source, pid ParsedID) (*copySource, error) {
	var b *Pool
	if p.sibling != nil {
		b = p.sibling(pid.Pool)
	}
	if b == nil || !b.Shared() {
		return nil, fmt.Errorf("snapshot %s is in pool %s, not %s: restore within its pool, or from a shared pool's backup: %w", src.ID, pid.Pool, p.cfg.Name, ErrInvalid)
	}
	s, err := b.Snapshot(pid.Hash)
	if err != nil {
		return nil, err
	}
	if !s.Ready {
		return nil, fmt.Errorf("snapshot %s is not ready to use yet: %w", src.ID, ErrPrecondition)
	}
	chunks := s.Backup != nil && s.Backup.Format == BackupChunks
	entry := filepath.Join(b.cfg.Path, snapshotsDir, pid.Hash)
	from := filepath.Join(entry, "data")
	if chunks {
		from = entry
	}
	if _, isDir := p.backend.Data(); isDir == chunks {
		shape := "a directory tree"
		if chunks {
			shape = "an image"
		}
		return nil, fmt.Errorf("snapshot %s holds %s, which pool %s (kind %s) cannot restore: %w", src.ID, shape, p.cfg.Name, p.kind, ErrInvalid)
	}
	return &copySource{from: from, created: s.CreatedAt, size: s.SizeBytes, access: s.AccessType, fsType: s.FSType,
		what: "snapshot " + src.ID, entry: entry, chunks: chunks, reread: func() error {
			now, err := b.readSnapshotAt(pid.Hash)
			if err == nil && now.ID != src.ID {
				err = fmt.Errorf("its record names %s", now.ID)
			}
			return err
		}}, nil
}

// fromSharedPool tells whether src is a snapshot of another pool (a shared one):
// its copy crosses filesystems, so it runs in the background.
func (p *Pool) fromSharedPool(src *Source) bool {
	if src.Kind != SourceSnapshot {
		return false
	}
	pid, err := ParseSnapshotID(src.ID)
	return err == nil && pid.Pool != p.cfg.Name
}
