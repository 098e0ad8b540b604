package storage_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"golang.org/x/sys/unix"
)

// deltaRemote is a storage.DeltaRemote serving source directories of this
// machine: Fetch reports the source's generation and a start time, FetchDelta
// copies the source anew into its staging directory and exchanges it with the
// base (the engine's side of a delta; the delta itself is pkg/transfer's).
type deltaRemote struct {
	*testengine.DirRemote
	mu      sync.Mutex
	dirs    map[string]string
	gen     string
	notBase bool          // the next FetchDelta answers ErrNotBase
	hold    chan struct{} // FetchDelta waits until it is closed
	deltas  []storage.Pulled
}

func newDeltaRemote() *deltaRemote {
	return &deltaRemote{DirRemote: testengine.NewDirRemote(mib), dirs: map[string]string{}, gen: "g1"}
}

func (d *deltaRemote) Add(id, dir string) {
	d.mu.Lock()
	d.dirs[id] = dir
	d.mu.Unlock()
	d.DirRemote.Add(id, dir)
}

func (d *deltaRemote) Fetch(ctx context.Context, src *storage.Source, peer storage.Peer, dest string, max int64, progress func(int64)) (*storage.Fetched, error) {
	since := time.Now()
	got, err := d.DirRemote.Fetch(ctx, src, peer, dest, max, progress)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	got.Generation, got.Since = d.gen, since
	d.mu.Unlock()
	return got, nil
}

func (d *deltaRemote) FetchDelta(_ context.Context, src *storage.Source, _ storage.Peer, base, staging string, from storage.Pulled, _ int64, progress func(int64)) (*storage.Fetched, error) {
	d.mu.Lock()
	d.deltas = append(d.deltas, from)
	dir, gen, hold, notBase := d.dirs[src.ID], d.gen, d.hold, d.notBase
	d.notBase = false
	d.mu.Unlock()
	if hold != nil {
		<-hold
	}
	if notBase {
		return nil, fmt.Errorf("fake: %s: %w", base, storage.ErrNotBase)
	}
	since := time.Now()
	if err := os.CopyFS(filepath.Join(staging, "data"), os.DirFS(dir)); err != nil {
		return nil, err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(staging, "data"), unix.AT_FDCWD, base, unix.RENAME_EXCHANGE); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(staging); err != nil {
		return nil, err
	}
	progress(7)
	return &storage.Fetched{Tree: true, SizeBytes: mib, AccessType: storage.AccessMount, Generation: gen, Since: since,
		Bytes: 7, Delta: from.Generation == gen}, nil
}

func (d *deltaRemote) holdDeltas() func() {
	d.mu.Lock()
	defer d.mu.Unlock()
	h := make(chan struct{})
	d.hold = h
	return sync.OnceFunc(func() {
		close(h)
		d.mu.Lock()
		d.hold = nil
		d.mu.Unlock()
	})
}

func (d *deltaRemote) set(f func(d *deltaRemote)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(d)
}

// resyncDone resyncs, asking again while it runs (as kubelet does on Aborted).
func resyncDone(t *testing.T, e *storage.Engine, id, src string) error {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := e.Resync(context.Background(), id, src)
		if !errors.Is(err, storage.ErrInProgress) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A volume cloned from another node's volume records where it came from
// (source, generation, the sender's start time); a resync from that source
// brings the changes over in the background (answering in progress with what it
// waits for), records itself, and is done once; another source, or a volume
// that was not pulled, is a failed precondition.
func TestResync(t *testing.T) {
	here := []map[string]string{{storage.TopologyKey: thisNode}}
	src := t.TempDir()
	testutil.WriteFile(t, filepath.Join(src, "f"), "v1")
	testutil.WriteFile(t, filepath.Join(src, "gone"), "gone")
	srcID := storage.VolumeID("default", "vol-b")
	r := newDeltaRemote()
	r.Add(srcID, src)
	e, p, _ := startRemoteEngine(t, r)

	pull := func(name string) *storage.Record {
		t.Helper()
		req := provisionReq(name)
		req.Requisite, req.Source = here, &storage.Source{Kind: storage.SourceVolume, ID: srcID}
		rec, err := provisionDone(t, e, p, req)
		if err != nil {
			t.Fatal(err)
		}
		return rec
	}
	rec := pull("moved")
	if rec.Pulled == nil || rec.Pulled.ID != srcID || rec.Pulled.Generation != "g1" || rec.Pulled.Since.IsZero() {
		t.Fatalf("record of a pulled volume: pulled %+v", rec.Pulled)
	}
	if b, err := os.ReadFile(filepath.Join(p.VolumeDir(rec.Hash()), "record.json")); err != nil || !strings.Contains(string(b), `"pulled"`) {
		t.Errorf("record file without what was pulled (%v): %s", err, b)
	}
	data := filepath.Join(p.VolumeDir(rec.Hash()), "data")

	testutil.WriteFile(t, filepath.Join(src, "f"), "v2")
	testutil.WriteFile(t, filepath.Join(src, "new"), "new")
	if err := os.Remove(filepath.Join(src, "gone")); err != nil {
		t.Fatal(err)
	}
	release := r.holdDeltas()
	t.Cleanup(release) // before the engine stops, when the test fails
	err := e.Resync(ctxWithin(time.Second), rec.ID, srcID)
	checkErr(t, err, storage.ErrInProgress)
	if want := "resyncing volume " + rec.ID + " from " + srcID + " on node node-b"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("answer during the resync: %v, want it to say %q", err, want)
	}
	// Nothing changes or reads the volume meanwhile: no expansion, no snapshot, no
	// clone (they would see it half patched).
	_, err = p.Expand(context.Background(), rec.Hash(), 2*mib, 0)
	checkErr(t, err, storage.ErrBusy)
	_, err = p.CreateSnapshot(context.Background(), "during-resync", rec.Hash())
	checkErr(t, err, storage.ErrBusy)
	clone := provisionReq("clone-during-resync")
	clone.Requisite, clone.Source = here, &storage.Source{Kind: storage.SourceVolume, ID: rec.ID}
	_, err = e.Provision(context.Background(), p, clone)
	checkErr(t, err, storage.ErrBusy)
	release()
	if err := resyncDone(t, e, rec.ID, srcID); err != nil {
		t.Fatal(err)
	}
	testutil.SameTree(t, "resynced volume", testutil.TreeSums(t, data), testutil.TreeSums(t, src))
	_, got, err := e.Volume(rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Resynced == nil || got.Resynced.ID != srcID || got.Resynced.Generation != "g1" {
		t.Errorf("record after the resync: resynced %+v", got.Resynced)
	}
	r.set(func(d *deltaRemote) {
		if len(d.deltas) != 1 || d.deltas[0] != *rec.Pulled {
			t.Errorf("delta fetches %+v, want one from %+v", d.deltas, *rec.Pulled)
		}
	})

	// Done once: the pod has used the volume since.
	testutil.WriteFile(t, filepath.Join(data, "written-by-the-pod"), "x")
	if err := e.Resync(context.Background(), rec.ID, srcID); err != nil {
		t.Errorf("second resync: %v", err)
	}
	testutil.AssertContent(t, filepath.Join(data, "written-by-the-pod"), "x")
	r.set(func(d *deltaRemote) {
		if len(d.deltas) != 1 {
			t.Errorf("%d delta fetches after a second resync, want 1", len(d.deltas))
		}
	})

	t.Run("another source", func(t *testing.T) {
		err := e.Resync(context.Background(), rec.ID, storage.VolumeID("default", "other"))
		checkErr(t, err, storage.ErrPrecondition)
		if err == nil || !strings.Contains(err.Error(), srcID) {
			t.Errorf("error %v does not say what the record says (%s)", err, srcID)
		}
	})
	t.Run("not pulled", func(t *testing.T) {
		plain, err := e.Provision(context.Background(), p, provisionReq("plain"))
		if err != nil {
			t.Fatal(err)
		}
		checkErr(t, e.Resync(context.Background(), plain.ID, srcID), storage.ErrPrecondition)
	})
	t.Run("unknown volume", func(t *testing.T) {
		checkErr(t, e.Resync(context.Background(), storage.VolumeID("default", "nope"), srcID), storage.ErrNotFound)
	})
	t.Run("not a copy: pulled in full", func(t *testing.T) {
		rec := pull("notbase")
		testutil.WriteFile(t, filepath.Join(src, "f"), "v3")
		r.set(func(d *deltaRemote) { d.notBase = true })
		fetches := len(r.Fetched())
		if err := resyncDone(t, e, rec.ID, srcID); err != nil {
			t.Fatal(err)
		}
		if n := len(r.Fetched()) - fetches; n != 1 {
			t.Errorf("%d full fetches, want 1", n)
		}
		dir := p.VolumeDir(rec.Hash())
		testutil.SameTree(t, "resynced volume", testutil.TreeSums(t, filepath.Join(dir, "data")), testutil.TreeSums(t, src))
		if ents, _ := os.ReadDir(dir); len(ents) != 2 {
			t.Errorf("volume directory holds %v, want data and record.json", ents)
		}
	})
	t.Run("another generation", func(t *testing.T) {
		rec := pull("regen")
		r.set(func(d *deltaRemote) { d.gen = "g2" })
		defer r.set(func(d *deltaRemote) { d.gen = "g1" })
		if err := resyncDone(t, e, rec.ID, srcID); err != nil {
			t.Fatal(err)
		}
		_, got, _ := e.Volume(rec.ID)
		if got.Pulled.Generation != "g2" || got.Resynced.Generation != "g2" {
			t.Errorf("record after a resync from another generation: pulled %+v, resynced %+v", got.Pulled, got.Resynced)
		}
		if err := e.Resync(context.Background(), rec.ID, srcID); err != nil {
			t.Errorf("second resync: %v", err)
		}
	})
}

// A restart removes what an interrupted resync left beside a volume's data
// (the record says it is not done: the next stage resyncs again), and keeps
// the data.
func TestRestartRemovesResyncLeftovers(t *testing.T) {
	base := t.TempDir()
	e, stop := startEngineStop(t, dirPool(base, "default"))
	p := mustPool(t, e, "default")
	rec, err := p.Create(context.Background(), storage.CreateRequest{Name: "v", RequiredBytes: mib, AccessType: storage.AccessMount})
	if err != nil {
		t.Fatal(err)
	}
	dir := p.VolumeDir(rec.Hash())
	testutil.WriteFile(t, filepath.Join(dir, ".resync", "data", "old"), "old tree")
	testutil.WriteFile(t, filepath.Join(dir, ".resync.transfer", "data", "partial"), "new tree")
	testutil.WriteFile(t, filepath.Join(dir, "data", "kept"), "kept")
	stop()

	startEngine(t, dirPool(base, "default"))
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 2 {
		t.Errorf("volume directory after a restart holds %v (%v), want data and record.json", ents, err)
	}
	testutil.AssertContent(t, filepath.Join(dir, "data", "kept"), "kept")
}
