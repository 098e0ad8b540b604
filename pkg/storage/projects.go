package storage

import (
	"fmt"
	"sync"
)

// ProjectIDBase is the first project ID Berth hands out. IDs below it are left to
// the operator (/etc/projid entries are commonly small numbers).
const ProjectIDBase = 1 << 20

// projectIDs allocates quota project IDs for every quota pool of the node, under one
// lock, so two pools on one filesystem never share an ID. An ID is in use while a
// committed volume's record holds it, while a create holds it, and while a deleted
// volume that used it waits in the trash (its files still count against it).
type projectIDs struct {
	mu   sync.Mutex
	used map[uint32]bool
	// blocked names a volume directory whose project ID could not be read: any ID
	// might be its, so none is handed out.
	blocked string
	cause   error
}

func newProjectIDs() *projectIDs { return &projectIDs{used: map[uint32]bool{}} }

// allocate returns the lowest free ID at or above ProjectIDBase.
func (a *projectIDs) allocate() (uint32, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.blocked != "" {
		return 0, errorf(ErrPrecondition, "no quota project ID is allocated: the project of %s, a volume directory without "+
			"a readable record, cannot be read (%v), so any ID might be its; an operator repairs or removes it and "+
			"restarts the driver (docs/operations.md, \"Unreadable records\")", a.blocked, a.cause)
	}
	for id := uint32(ProjectIDBase); id != 0; id++ {
		if !a.used[id] {
			a.used[id] = true
			return id, nil
		}
	}
	return 0, fmt.Errorf("no free quota project ID: %w", ErrNoSpace)
}

// mark records an ID found in use (a record read at start-up).
func (a *projectIDs) mark(id uint32) {
	if id == 0 {
		return
	}
	a.mu.Lock()
	a.used[id] = true
	a.mu.Unlock()
}

// block stops every allocation: the project of dir could not be read.
func (a *projectIDs) block(dir string, err error) {
	a.mu.Lock()
	if a.blocked == "" {
		a.blocked, a.cause = dir, err
	}
	a.mu.Unlock()
}

// free returns an ID whose volume is gone for good (purged, or never committed).
func (a *projectIDs) free(id uint32) {
	a.mu.Lock()
	delete(a.used, id)
	a.mu.Unlock()
}
