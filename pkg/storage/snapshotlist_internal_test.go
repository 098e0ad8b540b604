package storage

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// TestSnapshotsListCommittingCopyOnce: between a background copy's commit (its
// snapshot added to the committed set) and the copy's end (taken out of the
// building set) a listing saw the snapshot twice, ready and not, which broke
// ListSnapshots' paging (csi-sanity's "should return next token" failed once in CI).
// The window is played by putting the committed snapshot back in the building set.
func TestSnapshotsListCommittingCopyOnce(t *testing.T) {
	cfg := PoolConfig{Name: "default", Path: filepath.Join(t.TempDir(), "pool"), Kind: KindDir}
	e, err := New(Config{Pools: []PoolConfig{cfg}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); e.Wait() })
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	p := e.DefaultPool()
	r, err := p.Create(ctx, CreateRequest{Name: "vol", RequiredBytes: 1 << 20, AccessType: AccessMount})
	if err != nil {
		t.Fatal(err)
	}
	var snap *Snapshot
	for deadline := time.Now().Add(30 * time.Second); snap == nil || !snap.Ready; time.Sleep(10 * time.Millisecond) {
		if snap, err = p.CreateSnapshot(ctx, "snap", r.Hash()); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the snapshot's copy did not end")
		}
	}
	copying := *snap
	copying.Ready = false
	p.snaps.mu.Lock()
	p.snaps.building[snap.Hash()] = &build{snap: &copying, cancel: func() {}, done: make(chan struct{})}
	p.snaps.mu.Unlock()

	got := p.Snapshots()
	if len(got) != 1 || !got[0].Ready {
		t.Fatalf("listed %d snapshots (%+v), want the committed one once", len(got), got)
	}
	all, err := e.SnapshotsFrom("", SnapshotFilter{})
	if err != nil || len(all) != 1 {
		t.Fatalf("SnapshotsFrom: %d snapshots, %v", len(all), err)
	}
}
