package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/berth-csi/berth/pkg/storage/meta"
	"k8s.io/klog/v2"
)

// Group snapshots (CSI's VolumeGroupSnapshot): the snapshots of several volumes of
// this node taken at one instant, each an ordinary snapshot of its own pool (a
// content source for CreateVolume like any other) that names its group, plus the
// group's record in one pool, its home:
//
//	<home>/groups/<hash>/record.json   the group: its name, sources and members
//	<pool>/snapshots/<hash>/           each member, whose record names the group
//
// The group's record is its commit point: the members are committed first, the
// group last, so a member whose group does not exist belongs to a group that was
// never acknowledged (or whose deletion was), and start-up removes it
// (sweepGroupMembers); a group that exists has all its members. How the members are
// taken at one instant is in groupcreate.go and grouppause.go.
const (
	groupsDir   = "groups"
	groupPrefix = "g1-"
)

// GroupSnapshot is the durable description of a group snapshot.
type GroupSnapshot struct {
	Version int    `json:"version"`
	ID      string `json:"id"`
	Name    string `json:"name"`
	Pool    string `json:"pool"` // its home: the pool of the first source volume ID in order
	// SourceVolumeIDs are the volumes, sorted; SnapshotIDs their members, in the
	// same order.
	SourceVolumeIDs []string  `json:"sourceVolumeIDs"`
	SnapshotIDs     []string  `json:"snapshotIDs"`
	CreatedAt       time.Time `json:"createdAt"` // the instant every member was taken
	// Snapshots are the members, in answers (never stored).
	Snapshots []*Snapshot `json:"-"`
}

// GroupSnapshotID returns the ID of the group snapshot called name whose home is
// pool: g1-<pool>-<hash>.
func GroupSnapshotID(pool, name string) string {
	return groupPrefix + pool + "-" + nameHash("group", name)
}

// ParseGroupSnapshotID validates a group snapshot ID as strictly as a volume ID.
func ParseGroupSnapshotID(id string) (ParsedID, error) {
	if !strings.HasPrefix(id, groupPrefix) {
		return ParsedID{}, fmt.Errorf("group snapshot ID %q is not a Berth group snapshot ID: %w", truncate(id), ErrInvalid)
	}
	return ParseVolumeID("b1-" + id[len(groupPrefix):])
}

// memberName is the name of the snapshot of volume taken in group name. The ':'
// never occurs in a CreateSnapshot name (ValidateName), so no snapshot of its own
// can have a member's ID.
func memberName(group, volumeID string) string { return "group:" + group + ":" + volumeID }

// MemberSnapshotID is the ID of the snapshot of volumeID in the group snapshot
// called name (the volume's pool holds it); ErrInvalid when volumeID is not a volume
// ID. The controller locks these IDs while it creates the group.
func MemberSnapshotID(name, volumeID string) (string, error) {
	pid, err := ParseVolumeID(volumeID)
	if err != nil {
		return "", err
	}
	return SnapshotID(pid.Pool, memberName(name, volumeID)), nil
}

// groupDir is the directory of the group with this hash in p.
func (p *Pool) groupDir(hash string) string { return filepath.Join(p.cfg.Path, groupsDir, hash) }

// readGroup reads the group with this hash from p: ErrNotFound when there is none.
func (p *Pool) readGroup(hash string) (*GroupSnapshot, error) {
	dir := p.groupDir(hash)
	data, err := os.ReadFile(filepath.Join(dir, recordFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("group snapshot %s in pool %s: %w", hash, p.cfg.Name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("group snapshot %s in pool %s: %w", hash, p.cfg.Name, err)
	}
	var g GroupSnapshot
	if err := json.Unmarshal(data, &g); err != nil {
		return nil, fmt.Errorf("decode %s: %w", dir, err)
	}
	if g.Version != recordVersion {
		return nil, fmt.Errorf("%s: unsupported group snapshot record version %d", dir, g.Version)
	}
	id, err := ParseGroupSnapshotID(g.ID)
	if err != nil || id.Pool != p.cfg.Name || id.Hash != hash || len(g.SnapshotIDs) != len(g.SourceVolumeIDs) {
		return nil, fmt.Errorf("group snapshot record of %q in pool %s does not match directory %s", truncate(g.ID), p.cfg.Name, hash)
	}
	return &g, nil
}

// resolveGroup validates a group snapshot ID and returns its home pool and hash,
// with Resolve's rules.
func (e *Engine) resolveGroup(id string) (*Pool, string, error) {
	return e.resolveID("group snapshot", id, ParseGroupSnapshotID)
}

// GroupSnapshot returns a group snapshot and its members by ID: ErrNotFound when
// there is none. snapshotIDs, when given, must be its members (in any order), else
// ErrInvalid: the CO names the snapshots it believes the group holds.
func (e *Engine) GroupSnapshot(id string, snapshotIDs []string) (*GroupSnapshot, error) {
	p, hash, err := e.resolveGroup(id)
	if err != nil {
		return nil, err
	}
	g, err := p.readGroup(hash)
	if err != nil {
		return nil, err
	}
	if err := checkMembers(g, snapshotIDs); err != nil {
		return nil, err
	}
	return e.withMembers(g)
}

// checkMembers refuses snapshotIDs that are not exactly the group's members.
func checkMembers(g *GroupSnapshot, snapshotIDs []string) error {
	if len(snapshotIDs) == 0 {
		return nil
	}
	if !slices.Equal(slices.Sorted(slices.Values(snapshotIDs)), slices.Sorted(slices.Values(g.SnapshotIDs))) {
		return errorf(ErrInvalid, "snapshot_ids %v are not the snapshots of group snapshot %s, %v", snapshotIDs, g.ID, g.SnapshotIDs)
	}
	return nil
}

// withMembers fills in the group's members from their pools.
func (e *Engine) withMembers(g *GroupSnapshot) (*GroupSnapshot, error) {
	out := *g
	out.Snapshots = make([]*Snapshot, 0, len(g.SnapshotIDs))
	for _, id := range g.SnapshotIDs {
		s, err := e.Snapshot(id)
		if err != nil {
			// A member cannot go while its group exists (DeleteSnapshot refuses it).
			return nil, errorf(ErrPrecondition, "group snapshot %s: its snapshot %s cannot be read: %v", g.ID, id, err)
		}
		out.Snapshots = append(out.Snapshots, s)
	}
	return &out, nil
}

// groupAlive reports whether the group snapshot with this ID exists; true when that
// cannot be told (a pool this engine does not have, a record it cannot read), so a
// member is never deleted alone by mistake.
func (e *Engine) groupAlive(id string) bool {
	p, hash, err := e.resolveGroup(id)
	if err != nil {
		return !errors.Is(err, ErrNotFound) || errors.Is(err, ErrPoolNotConfigured)
	}
	_, err = p.readGroup(hash)
	return !errors.Is(err, ErrNotFound)
}

// DeleteGroupSnapshot deletes a group snapshot and its members; an unknown group is
// success. snapshotIDs, when given, must be its members (ErrInvalid); a member being
// restored or sent to another node is ErrInUse, and nothing is deleted. The group's
// record goes first: from then on its members are strays, which this call (for the
// members snapshotIDs name) and start-up remove. The caller holds the group's and
// the members' locks.
func (e *Engine) DeleteGroupSnapshot(ctx context.Context, id string, snapshotIDs []string) error {
	p, hash, err := e.resolveGroup(id)
	if err != nil {
		return unresolvedDelete("group snapshot", id, err)
	}
	g, err := p.readGroup(hash)
	if errors.Is(err, ErrNotFound) {
		// Gone, perhaps by a deletion that stopped after the group's record: its
		// members named here go now.
		return e.deleteStrays(ctx, id, snapshotIDs)
	}
	if err != nil {
		return err
	}
	if err := checkMembers(g, snapshotIDs); err != nil {
		return err
	}
	for _, sid := range g.SnapshotIDs {
		if sp, shash, err := e.ResolveSnapshot(sid); err == nil {
			if err := sp.snapshotBusy(shash); err != nil {
				return fmt.Errorf("delete group snapshot %s: %w", id, err)
			}
		}
	}
	if err := p.toTrash(filepath.Join(p.cfg.Path, groupsDir), hash); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete group snapshot %s: %w", id, err)
	}
	if err := meta.SyncDir(filepath.Join(p.cfg.Path, groupsDir)); err != nil {
		return fmt.Errorf("delete group snapshot %s: %w", id, err)
	}
	p.kickPurge()
	klog.FromContext(ctx).V(4).Info("Group snapshot moved to trash", "groupSnapshotID", id)
	return e.deleteStrays(ctx, id, g.SnapshotIDs)
}

// deleteStrays deletes the snapshots among ids that name the group snapshot group
// (which no longer exists).
func (e *Engine) deleteStrays(ctx context.Context, group string, ids []string) error {
	var errs []error
	for _, sid := range ids {
		sp, shash, err := e.ResolveSnapshot(sid)
		if err != nil {
			continue
		}
		s, err := sp.Snapshot(shash)
		if err != nil || s.Group != group {
			continue
		}
		if err := sp.DeleteSnapshot(ctx, shash); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// snapshotBusy is ErrInUse while the snapshot cannot be deleted: a volume is being
// restored from it, or it is being sent to another node.
func (p *Pool) snapshotBusy(hash string) error {
	p.snaps.mu.Lock()
	s, ok := p.snaps.snaps[hash]
	p.snaps.mu.Unlock()
	if !ok {
		return nil
	}
	if to, ok := p.copyingFrom(SourceSnapshot, s.ID); ok {
		return fmt.Errorf("delete snapshot %s: volume %s is being restored from it: %w", s.ID, to, ErrInUse)
	}
	if p.exporting(s.ID) {
		return fmt.Errorf("delete snapshot %s: it is being sent to another node: %w", s.ID, ErrInUse)
	}
	return nil
}

// sweepGroupMembers removes, at start-up, the snapshots of group snapshots that do
// not exist: a creation that stopped between its members' commit and the group's, or
// a deletion between the group's removal and its members'. A member whose group's
// home pool is not configured here is left, logged.
func (e *Engine) sweepGroupMembers(ctx context.Context) {
	logger := klog.FromContext(ctx)
	for _, p := range e.pools {
		if p.Shared() {
			continue // groups never take shared pools' volumes
		}
		for _, s := range p.Snapshots() {
			if s.Group == "" || e.groupAlive(s.Group) {
				if s.Group != "" {
					if _, _, err := e.resolveGroup(s.Group); errors.Is(err, ErrPoolNotConfigured) {
						logger.Info("Snapshot of a group snapshot whose pool is not configured here: left alone", "snapshotID", s.ID, "groupSnapshotID", s.Group)
					}
				}
				continue
			}
			if err := p.DeleteSnapshot(ctx, s.Hash()); err != nil {
				logger.Error(err, "Cannot remove the snapshot of a group snapshot that does not exist", "snapshotID", s.ID, "groupSnapshotID", s.Group)
				continue
			}
			logger.Info("Removed the snapshot of a group snapshot that does not exist (interrupted creation or deletion)", "snapshotID", s.ID, "groupSnapshotID", s.Group)
		}
	}
}

// GroupSnapshotsServed reports whether a group snapshot can be taken here at all:
// this process serves its node (it knows the volumes' writers) and one of its pools
// can hold members (node-local, served, its filesystem with reflinks).
func (e *Engine) GroupSnapshotsServed() bool {
	if e.node == nil {
		return false
	}
	for _, p := range e.pools {
		if !p.Shared() && p.Health() == nil && p.copyIsFast() {
			return true
		}
	}
	return false
}
