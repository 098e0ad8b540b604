package storage_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

// startRemoteEngine starts an engine on one dir pool "default" with r as its Remote.
func startRemoteEngine(t *testing.T, r storage.Remote) (*storage.Engine, *storage.Pool, string) {
	t.Helper()
	base := t.TempDir()
	e, err := storage.New(storage.Config{Pools: []storage.PoolConfig{dirPool(base, "default")}})
	if err != nil {
		t.Fatal(err)
	}
	e.SetRemote(r)
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logr.Discard()))
	t.Cleanup(func() { cancel(); e.Wait() })
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return e, mustPool(t, e, "default"), filepath.Join(base, "default")
}

// provisionDone provisions req, asking again while its copy runs (as the
// provisioner does on Aborted), until it is committed or fails.
func provisionDone(t *testing.T, e *storage.Engine, p *storage.Pool, req storage.ProvisionRequest) (*storage.Record, error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := e.Provision(context.Background(), p, req)
		if !errors.Is(err, storage.ErrInProgress) || time.Now().After(deadline) {
			return r, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A restore or clone whose source another node holds is pulled from there, in the
// background, into a volume of this node; a source no node holds stays NotFound;
// a lookup that fails leaves the claim to be sent to the source's node; what was
// fetched must be of the pool's kind and the volume's access type.
func TestProvisionPullsSourceFromAnotherNode(t *testing.T) {
	here := []map[string]string{{storage.TopologyKey: thisNode}}
	src := t.TempDir()
	testutil.MkdirAll(t, filepath.Join(src, "sub"))
	testutil.WriteFile(t, filepath.Join(src, "sub", "f"), "from node-b")
	snap, vol := storage.SnapshotID("default", "snap-b"), storage.VolumeID("default", "vol-b")
	r := testengine.NewDirRemote(mib)
	r.Add(snap, src)
	r.Add(vol, src)
	e, p, poolPath := startRemoteEngine(t, r)

	for i, source := range []*storage.Source{{Kind: storage.SourceSnapshot, ID: snap}, {Kind: storage.SourceVolume, ID: vol}} {
		req := provisionReq(fmt.Sprintf("pulled-%d", i))
		req.Requisite, req.Source = here, source
		// While the pull runs, the answer says what it waits for (the claim's events).
		release := r.Hold()
		_, err := e.Provision(ctxWithin(time.Second), p, req)
		checkErr(t, err, storage.ErrInProgress)
		if want := "pulling " + source.Kind + " " + source.ID + " from node node-b"; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("answer during the pull: %v, want it to say %q", err, want)
		}
		release()
		rec, err := provisionDone(t, e, p, req)
		if err != nil {
			t.Fatalf("%s: %v", source.Kind, err)
		}
		testutil.AssertContent(t, filepath.Join(p.VolumeDir(rec.Hash()), "data", "sub", "f"), "from node-b")
		if *rec.ContentSource != *source {
			t.Errorf("recorded source %+v, want %+v", rec.ContentSource, source)
		}
		b, err := os.ReadFile(filepath.Join(p.VolumeDir(rec.Hash()), "record.json"))
		if err != nil || strings.Contains(string(b), "node-b") {
			t.Errorf("the record names the peer, or cannot be read (%v): %s", err, b)
		}
		// Asked again: the same volume, not another pull.
		before := len(r.Fetched())
		if again, err := e.Provision(context.Background(), p, req); err != nil || again.ID != rec.ID || len(r.Fetched()) != before {
			t.Errorf("retry: %v, %d more fetches", err, len(r.Fetched())-before)
		}
	}
	if f := r.Fetched(); len(f) != 2 || f[0].Node != "node-b" {
		t.Errorf("fetches: %+v", f)
	}

	t.Run("no node holds it", func(t *testing.T) {
		req := provisionReq("nowhere")
		req.Requisite, req.Source = here, &storage.Source{Kind: storage.SourceSnapshot, ID: storage.SnapshotID("default", "gone")}
		_, err := e.Provision(context.Background(), p, req)
		checkErr(t, err, storage.ErrNotFound)
		if errors.Is(err, storage.ErrUnreachable) {
			t.Errorf("a source no node holds sends the claim to another node: %v", err)
		}
	})
	t.Run("lookup failed", func(t *testing.T) {
		r.FailLookups(errors.New("pv-lister: connection refused"))
		defer r.FailLookups(nil)
		req := provisionReq("unknown")
		req.Requisite, req.Source = here, &storage.Source{Kind: storage.SourceSnapshot, ID: storage.SnapshotID("default", "unknown")}
		_, err := e.Provision(context.Background(), p, req)
		checkErr(t, err, storage.ErrUnreachable)
	})
	t.Run("an image into a dir pool", func(t *testing.T) {
		r.Report(storage.Fetched{Tree: false, SizeBytes: mib, AccessType: storage.AccessMount})
		req := provisionReq("wrong-kind")
		req.Requisite, req.Source = here, &storage.Source{Kind: storage.SourceSnapshot, ID: snap}
		_, err := provisionDone(t, e, p, req)
		checkErr(t, err, storage.ErrInvalid)
		if n := len(e.AllVolumes()); n != 2 {
			t.Errorf("%d volumes after a refused pull, want the 2 pulled before", n)
		}
		if ents, _ := os.ReadDir(filepath.Join(poolPath, "tmp")); len(ents) != 0 {
			t.Errorf("left in tmp: %v", ents)
		}
	})
}

// ctxWithin is a context that ends after d (the caller's deadline a copy's
// answer waits half of).
func ctxWithin(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	time.AfterFunc(d, cancel)
	return ctx
}
