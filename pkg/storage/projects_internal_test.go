package storage

import (
	"errors"
	"testing"
)

// A pod that can change project IDs must not find a neighbour's by counting from
// its own: IDs are drawn at random, in range, never twice.
func TestProjectIDsUnpredictable(t *testing.T) {
	a := newProjectIDs()
	const n = 2000
	ids := make([]uint32, 0, n)
	seen := map[uint32]bool{}
	for range n {
		id, err := a.allocate()
		if err != nil {
			t.Fatal(err)
		}
		if id < ProjectIDBase || id >= projectIDLimit {
			t.Fatalf("project ID %d outside [%d, %d)", id, ProjectIDBase, projectIDLimit)
		}
		if seen[id] {
			t.Fatalf("project ID %d handed out twice", id)
		}
		seen[id] = true
		ids = append(ids, id)
	}
	// In order, every ID would follow the one before; at random (2^31 values) one
	// neighbour pair among 2000 draws has a chance of about 1e-6.
	var next int
	for i := 1; i < len(ids); i++ {
		if ids[i] == ids[i-1]+1 || ids[i]+1 == ids[i-1] {
			next++
		}
	}
	if next > 1 {
		t.Fatalf("%d of %d project IDs are the previous one plus or minus 1: they can be guessed", next, n-1)
	}
}

func TestProjectIDsTakenAndFreed(t *testing.T) {
	a := newProjectIDs()
	// IDs of volumes made before (in order, from ProjectIDBase) stay taken.
	for id := uint32(ProjectIDBase); id < ProjectIDBase+100; id++ {
		a.mark(id)
	}
	for range 1000 {
		id, err := a.allocate()
		if err != nil {
			t.Fatal(err)
		}
		if id < ProjectIDBase+100 {
			t.Fatalf("project ID %d of an existing volume handed out again", id)
		}
		a.free(id)
		if a.used[id] {
			t.Fatalf("project ID %d still taken after free", id)
		}
	}
	a.block("/pool/volumes/x", errors.New("EIO"))
	if _, err := a.allocate(); !errors.Is(err, ErrPrecondition) {
		t.Fatalf("allocate with an unreadable volume directory: %v, want ErrPrecondition", err)
	}
}
