package storage

import (
	"errors"
	"fmt"
	"sort"
)

// VolumesFrom lists the volumes whose IDs are not below token, in ID order (every
// volume when token is empty): a listing resumes at its token although volumes were
// created or deleted meanwhile. A token that is not a volume ID is ErrBadToken.
func (e *Engine) VolumesFrom(token string) ([]*Record, error) {
	all := e.AllVolumes()
	if token == "" {
		return all, nil
	}
	if _, err := ParseVolumeID(token); err != nil {
		return nil, errorf(ErrBadToken, "starting_token %q is not valid: %v", token, err)
	}
	return all[sort.Search(len(all), func(i int) bool { return all[i].ID >= token }):], nil
}

// SnapshotFilter narrows a listing of snapshots; an empty field matches any.
type SnapshotFilter struct {
	SnapshotID     string
	SourceVolumeID string
}

// SnapshotsFrom lists the snapshots that match f, committed or being copied, from
// token on in ID order, with VolumesFrom's rules for the token.
func (e *Engine) SnapshotsFrom(token string, f SnapshotFilter) ([]*Snapshot, error) {
	if token != "" {
		if _, err := ParseSnapshotID(token); err != nil {
			return nil, errorf(ErrBadToken, "starting_token %q is not valid: %v", token, err)
		}
	}
	var all []*Snapshot
	if f.SnapshotID != "" {
		s, err := e.Snapshot(f.SnapshotID)
		switch {
		case err == nil:
			all = append(all, s)
		case errors.Is(err, ErrNotReady):
			// Not "no such snapshot": its pool cannot be read now.
			return nil, err
		}
	} else {
		all = e.AllSnapshots()
	}
	kept := all[:0]
	for _, s := range all {
		if (f.SourceVolumeID == "" || s.SourceVolumeID == f.SourceVolumeID) && s.ID >= token {
			kept = append(kept, s)
		}
	}
	return kept, nil
}

// Snapshot returns one snapshot, committed or being copied, by ID: ErrNotFound when
// no snapshot has that ID here (a harmless ID that is not Berth's included),
// ErrInvalid for an ID that is not even a valid name, ErrNotReady for a shared pool
// that cannot be read now.
func (e *Engine) Snapshot(id string) (*Snapshot, error) {
	p, hash, err := e.ResolveSnapshot(id)
	if err != nil {
		return nil, err
	}
	s, err := p.Snapshot(hash)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	return s, nil
}
