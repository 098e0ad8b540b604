package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/berth-csi/berth/pkg/storage/clone"
	"github.com/berth-csi/berth/pkg/storage/meta"
	"k8s.io/klog/v2"
)

// groupCopy takes a member: a reflink or nothing, never a copy, which would hold
// the writers paused for its whole length.
var groupCopy = clone.Options{Reflink: clone.Always, Specials: clone.Recreate}

// groupMember is one source volume of a group being made, and its snapshot.
type groupMember struct {
	pool      *Pool
	src       *Record
	snap      *Snapshot
	tmp       string // its entry under the pool's tmp/, once made
	committed bool   // renamed into snapshots/
}

// CreateGroupSnapshot snapshots the volumes sources together, at one instant, into
// the group snapshot called name. An identical earlier request returns the same
// group (whatever the order of sources); the same name for other sources is
// ErrExists. Volumes that cannot be taken together consistently are refused with
// ErrPrecondition naming why: a shared pool's (written from other nodes), a pool
// without reflinks (a copy would be needed), a writer that cannot be paused. The
// caller holds the locks of the name, the sources and the members' snapshot IDs.
func (e *Engine) CreateGroupSnapshot(ctx context.Context, name string, sources []string) (*GroupSnapshot, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if len(sources) == 0 {
		return nil, errorf(ErrInvalid, "source_volume_ids is required")
	}
	sorted := slices.Sorted(slices.Values(sources))
	for i, id := range sorted {
		if err := ValidateName(id); err != nil {
			return nil, fmt.Errorf("source volume ID: %w", err)
		}
		if i > 0 && sorted[i-1] == id {
			return nil, errorf(ErrInvalid, "source volume %s is named twice", id)
		}
	}
	hash := nameHash("group", name)
	g, err := e.findGroup(hash)
	if err != nil {
		return nil, err
	}
	if g != nil {
		if !slices.Equal(g.SourceVolumeIDs, sorted) {
			return nil, errorf(ErrExists, "group snapshot %q exists (%s) of volumes %v, not %v", name, g.ID, g.SourceVolumeIDs, sorted)
		}
		return e.withMembers(g)
	}
	if e.node == nil {
		return nil, errorf(ErrPrecondition, "group snapshots are taken by a driver that serves its node too (--mode all): without the node service, which pods write the volumes is unknown")
	}
	members, err := e.groupMembers(ctx, name, sorted)
	if err != nil {
		return nil, err
	}
	home := members[0].pool
	g = &GroupSnapshot{Version: recordVersion, ID: GroupSnapshotID(home.Name(), name), Name: name, Pool: home.Name(), SourceVolumeIDs: sorted}
	for _, m := range members {
		m.snap.Group = g.ID
		g.SnapshotIDs = append(g.SnapshotIDs, m.snap.ID)
	}
	w, err := e.planWriters(members)
	if err != nil {
		return nil, err
	}
	var reserved []*groupMember
	defer func() {
		for _, m := range reserved {
			m.pool.release(m.snap.SizeBytes)
		}
	}()
	for _, m := range members {
		if err := m.pool.reserve(m.snap.SizeBytes); err != nil {
			return nil, fmt.Errorf("group snapshot %s: snapshot of %s: %w", g.ID, m.src.ID, err)
		}
		reserved = append(reserved, m)
	}
	if err := e.buildGroup(ctx, g, home, members, w); err != nil {
		return nil, err
	}
	reserved = nil // committed: now allocated as snapshots
	klog.FromContext(ctx).V(4).Info("Group snapshot committed", "groupSnapshotID", g.ID, "snapshots", len(members))
	return e.withMembers(g)
}

// findGroup finds the group snapshot with this name hash in any pool (nil when
// none): a name is one group on this node, whichever pool is its home.
func (e *Engine) findGroup(hash string) (*GroupSnapshot, error) {
	for _, p := range e.pools {
		if p.Shared() {
			continue
		}
		g, err := p.readGroup(hash)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		return g, err
	}
	return nil, nil
}

// groupMembers resolves the sources (every unknown one named at once), then checks
// that each can be taken in a group.
func (e *Engine) groupMembers(ctx context.Context, name string, sorted []string) ([]*groupMember, error) {
	var members []*groupMember
	var missing []string
	for _, id := range sorted {
		p, r, err := e.Volume(id)
		if errors.Is(err, ErrNotFound) {
			missing = append(missing, id)
			continue
		}
		if err != nil {
			return nil, err
		}
		members = append(members, &groupMember{pool: p, src: r})
	}
	if len(missing) > 0 {
		if len(members) > 0 {
			return nil, errorf(ErrNotFound, "volumes %v are not on this node, which holds %s: a group snapshot's volumes must all be on one node", missing, members[0].src.ID)
		}
		return nil, errorf(ErrNotFound, "volumes %v are not on this node", missing)
	}
	groupID := GroupSnapshotID(members[0].pool.Name(), name)
	for _, m := range members {
		p, r := m.pool, m.src
		if err := p.canJoinGroup(r); err != nil {
			return nil, err
		}
		snapID := SnapshotID(p.Name(), memberName(name, r.ID))
		hash := snapID[len(snapID)-hashLen:]
		if err := p.damagedSnapshot(hash); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", snapID, err)
		}
		if s, err := p.Snapshot(hash); err == nil {
			if s.Group != groupID {
				return nil, errorf(ErrExists, "snapshot %s exists and is not of group snapshot %s", snapID, groupID)
			}
			// A member of this group, which does not exist: left by an attempt
			// that failed, never acknowledged.
			if err := p.DeleteSnapshot(ctx, hash); err != nil {
				return nil, err
			}
		}
		m.snap = &Snapshot{
			Version: recordVersion, ID: snapID, Name: memberName(name, r.ID), Pool: p.Name(), SourceVolumeID: r.ID,
			SizeBytes: r.CapacityBytes, AccessType: r.AccessType, FSType: r.FSType,
		}
	}
	return members, nil
}

// canJoinGroup is nil when a snapshot of volume r can be taken at a group's instant.
func (p *Pool) canJoinGroup(r *Record) error {
	switch {
	case p.Shared():
		return errorf(ErrPrecondition, "volume %s is in shared pool %s, which other nodes write: they cannot be paused from here, so it cannot be taken in a consistent group snapshot", r.ID, p.cfg.Name)
	case p.Health() != nil:
		return errorf(ErrNotReady, "volume %s: pool %s cannot be served: %v", r.ID, p.cfg.Name, p.Health())
	case !p.copyIsFast():
		return errorf(ErrPrecondition, "volume %s is in pool %s, whose filesystem has no reflinks: a group snapshot takes every volume while their writers are paused, and a copy would keep them paused for its whole length (put the pool on a filesystem with reflinks, such as XFS or btrfs)", r.ID, p.cfg.Name)
	}
	return nil
}

// buildGroup takes the members at one instant, records them, and commits them and
// then the group. On error, everything made is removed.
func (e *Engine) buildGroup(ctx context.Context, g *GroupSnapshot, home *Pool, members []*groupMember, w *writers) (err error) {
	logger := klog.FromContext(ctx)
	hash := g.ID[len(g.ID)-hashLen:]
	entryName := "g" + hash + "." + randHex()
	entry := filepath.Join(home.cfg.Path, tmpDir, entryName)
	if err := os.Mkdir(entry, 0o700); err != nil {
		return home.noSpace(stepBuild, fmt.Errorf("group snapshot %s: %w", g.ID, err))
	}
	defer func() {
		if err != nil {
			e.rollbackGroup(ctx, home, entryName, members)
		}
	}()
	if err := e.capture(ctx, g, members, w, entry); err != nil {
		return err
	}
	// Flush the copies (one syncfs per filesystem), then record each member.
	synced := map[*Pool]bool{}
	for _, m := range members {
		dir := filepath.Join(m.pool.cfg.Path, tmpDir, m.tmp)
		if !synced[m.pool] {
			if err := syncFS(dir); err != nil {
				return m.pool.noSpace(stepCopy, err)
			}
			synced[m.pool] = true
		}
		m.snap.CreatedAt = g.CreatedAt
		m.pool.anchorImage(ctx, dir, m.snap.ID)
		if err := writeRecordIn(dir, m.snap); err != nil {
			return m.pool.noSpace(stepRecord, fmt.Errorf("snapshot %s: %w", m.snap.ID, err))
		}
	}
	if err := writeRecordIn(entry, g); err != nil {
		return home.noSpace(stepRecord, fmt.Errorf("group snapshot %s: %w", g.ID, err))
	}
	// The members first, the group last: the group's record is the commit.
	for _, m := range members {
		final := filepath.Join(m.pool.cfg.Path, snapshotsDir, m.snap.Hash())
		if err := renameNoReplace(filepath.Join(m.pool.cfg.Path, tmpDir, m.tmp), final); err != nil {
			return fmt.Errorf("commit %s: %w", final, err)
		}
		m.committed = true
	}
	for p := range synced {
		if err := p.snaps.sync.Sync(); err != nil {
			return err
		}
	}
	final := home.groupDir(hash)
	if err := renameNoReplace(entry, final); err != nil {
		return fmt.Errorf("commit %s: %w", final, err)
	}
	if err := meta.SyncDir(filepath.Dir(final)); err != nil {
		if rerr := os.Rename(final, entry); rerr != nil {
			logger.Error(rerr, "Cannot undo group snapshot commit after failed flush", "groupSnapshotID", g.ID)
		}
		return err
	}
	for _, m := range members {
		committed := *m.snap
		committed.Ready = true
		m.pool.snaps.mu.Lock()
		m.pool.snaps.snaps[m.snap.Hash()] = &committed
		m.pool.snaps.mu.Unlock()
		m.pool.mu.Lock()
		m.pool.inflight -= m.snap.SizeBytes // still allocated, now as a committed snapshot
		m.pool.mu.Unlock()
	}
	return nil
}

// capture takes every member while their writers are paused: reflinks into each
// member's entry under its pool's tmp/. One group pauses at a time: two groups
// sharing a pod would otherwise resume it under each other.
func (e *Engine) capture(ctx context.Context, g *GroupSnapshot, members []*groupMember, w *writers, entry string) error {
	logger := klog.FromContext(ctx)
	e.groupMu.Lock()
	defer e.groupMu.Unlock()
	resume, err := e.pause(ctx, w, entry)
	if err != nil {
		return fmt.Errorf("group snapshot %s: %w", g.ID, err)
	}
	start := time.Now()
	g.CreatedAt = start.UTC()
	defer func() {
		resume()
		logger.V(4).Info("Group snapshot writers resumed", "groupSnapshotID", g.ID, "pausedFor", time.Since(start))
	}()
	for _, m := range members {
		name, isDir := m.pool.backend.Data()
		m.tmp = "s" + m.snap.Hash() + "." + randHex()
		dir := filepath.Join(m.pool.cfg.Path, tmpDir, m.tmp)
		if err := os.Mkdir(dir, 0o700); err != nil {
			m.tmp = ""
			return m.pool.noSpace(stepBuild, fmt.Errorf("snapshot %s of %s: %w", m.snap.ID, m.src.ID, err))
		}
		from := filepath.Join(m.pool.VolumeDir(m.src.Hash()), name)
		if isDir {
			_, err = clone.Tree(ctx, from, dir, name, groupCopy)
		} else {
			_, err = clone.File(ctx, from, filepath.Join(dir, name), groupCopy)
		}
		if errors.Is(err, clone.ErrNoReflink) {
			return errorf(ErrPrecondition, "snapshot of volume %s: %v: a copy would not be taken at the group's instant", m.src.ID, err)
		}
		if err != nil {
			return m.pool.noSpace(stepCopy, fmt.Errorf("snapshot %s of %s: %w", m.snap.ID, m.src.ID, err))
		}
		logger.V(4).Info("Group snapshot member captured", "groupSnapshotID", g.ID, "snapshotID", m.snap.ID, "sourceVolumeID", m.src.ID)
	}
	return nil
}

// writeRecordIn writes v as the record.json of a new entry dir, durably.
func writeRecordIn(dir string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := meta.WriteNew(filepath.Join(dir, recordFile), data); err != nil {
		return err
	}
	return meta.SyncDir(dir)
}

// rollbackGroup removes what a failed build made: the members' entries (committed
// ones moved out of snapshots/ first) and the group's entry, all into the trash.
func (e *Engine) rollbackGroup(ctx context.Context, home *Pool, entryName string, members []*groupMember) {
	logger := klog.FromContext(ctx)
	trash := func(p *Pool, parent, name string) {
		if err := p.toTrash(parent, name); err != nil && !errors.Is(err, os.ErrNotExist) {
			logger.Error(err, "Cannot roll back part of a group snapshot; start-up will", "entry", name)
		}
		p.kickPurge()
	}
	for _, m := range members {
		switch {
		case m.committed:
			trash(m.pool, filepath.Join(m.pool.cfg.Path, snapshotsDir), m.snap.Hash())
			if err := m.pool.snaps.sync.Sync(); err != nil {
				logger.Error(err, "Cannot flush the rollback of a group snapshot member", "snapshotID", m.snap.ID)
			}
		case m.tmp != "":
			trash(m.pool, filepath.Join(m.pool.cfg.Path, tmpDir), m.tmp)
		}
	}
	trash(home, filepath.Join(home.cfg.Path, tmpDir), entryName)
}
