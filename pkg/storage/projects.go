package storage

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"sync"
)

// ProjectIDBase is the first project ID Berth hands out. IDs below it are left to
// the operator (/etc/projid entries are commonly small numbers).
const ProjectIDBase = 1 << 20

// projectIDLimit bounds the IDs handed out: below 2^31, so that tools which read
// an ID as a signed 32-bit number show it as it is.
const projectIDLimit = 1 << 31

// randomTries is how many random IDs allocate draws before it looks for a free one
// in order from a random start (only when nearly every ID is taken).
const randomTries = 64

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

// allocate returns a free ID drawn at random in [ProjectIDBase, 2^31), so that a
// pod able to change project IDs (docs/operations.md, "Quota pools and project
// IDs") cannot take a neighbour's by counting from its own, as it could when IDs
// were handed out in order. IDs already taken (those of volumes made before,
// whatever their value) are never handed out again.
func (a *projectIDs) allocate() (uint32, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.blocked != "" {
		return 0, errorf(ErrPrecondition, "no quota project ID is allocated: the project of %s, a volume directory without "+
			"a readable record, cannot be read (%v), so any ID might be its; an operator repairs or removes it and "+
			"restarts the driver (docs/operations.md, \"Unreadable records\")", a.blocked, a.cause)
	}
	const span = projectIDLimit - ProjectIDBase
	for range randomTries {
		id := ProjectIDBase + randUint32()%span
		if !a.used[id] {
			a.used[id] = true
			return id, nil
		}
	}
	start := randUint32() % span
	for i := uint32(0); i < span; i++ {
		id := ProjectIDBase + (start+i)%span
		if !a.used[id] {
			a.used[id] = true
			return id, nil
		}
	}
	return 0, fmt.Errorf("no free quota project ID: %w", ErrNoSpace)
}

// randUint32 is a uniformly random 32-bit number from the system's CSPRNG.
func randUint32() uint32 {
	var b [4]byte
	_, _ = rand.Read(b[:]) // never fails on Linux (crypto/rand)
	return binary.LittleEndian.Uint32(b[:])
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
