package storage_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-csi/berth/pkg/storage"
)

// An Export names a volume's or snapshot's data for another node to read, and
// keeps it from being deleted here while it is read.
func TestExport(t *testing.T) {
	ctx := context.Background()
	e := startEngine(t, dirPool(t.TempDir(), "default"))
	p := e.DefaultPool()
	r := mustCreate(t, p, "vol", 1<<20)
	writeFile(t, filepath.Join(p.DataPath(r.Hash()), "f"), "data")
	s, err := p.CreateSnapshot(ctx, "snap", r.Hash())
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(snapTimeout); !s.Ready; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("snapshot not ready")
		}
		if s, err = p.Snapshot(s.Hash()); err != nil {
			t.Fatal(err)
		}
	}

	x, err := e.Export(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if x.Path != p.DataPath(r.Hash()) || !x.Tree || x.SizeBytes != r.CapacityBytes || x.AccessType != storage.AccessMount || x.Generation == "" {
		t.Errorf("export %+v", x)
	}
	checkErr(t, e.DeleteVolume(ctx, r.ID), storage.ErrInUse)
	xs, err := e.Export(ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	assertContent(t, filepath.Join(xs.Path, "f"), "data")
	checkErr(t, e.DeleteSnapshot(ctx, s.ID), storage.ErrInUse)
	if err := xs.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.DeleteSnapshot(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	if err := x.Close(); err != nil { // twice: released once
		t.Fatal(err)
	}
	gen := x.Generation
	if err := e.DeleteVolume(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	_, err = e.Export(ctx, r.ID)
	checkErr(t, err, storage.ErrNotFound)
	_, err = e.Export(ctx, "b1-nopool-0123456789abcdef0123456789abcdef")
	checkErr(t, err, storage.ErrNotFound)

	// The same name again is another object: another generation.
	r2 := mustCreate(t, p, "vol", 1<<20)
	x2, err := e.Export(ctx, r2.ID)
	if err != nil {
		t.Fatal(err)
	}
	if x2.ID != r.ID || x2.Generation == gen {
		t.Errorf("recreated volume: ID %s, generation %s (was %s)", x2.ID, x2.Generation, gen)
	}
	// A source deleted under the read (as another host of a shared pool would)
	// is reported by Close: what was read must not be used.
	moved := filepath.Join(t.TempDir(), "moved")
	if err := os.Rename(p.VolumeDir(r2.Hash()), moved); err != nil {
		t.Fatal(err)
	}
	checkErr(t, x2.Close(), storage.ErrNotFound)
	if err := os.Rename(moved, p.VolumeDir(r2.Hash())); err != nil {
		t.Fatal(err)
	}
}
