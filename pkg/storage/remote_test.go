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

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

// fakeRemote serves sources from directories of this machine, as other nodes
// would through the transfer channel.
type fakeRemote struct {
	mu      sync.Mutex
	dirs    map[string]string // source ID -> its data directory
	got     storage.Fetched   // what Fetch reports (Tree, access type...)
	lookErr error             // Locate's answer for IDs it does not know (nil: ErrNotFound)
	fetched []storage.Peer
}

func (f *fakeRemote) Locate(_ context.Context, src *storage.Source) (storage.Peer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.dirs[src.ID]; ok {
		return storage.Peer{Node: "node-b", Address: "10.0.0.2"}, nil
	}
	if f.lookErr != nil {
		return storage.Peer{}, f.lookErr
	}
	return storage.Peer{}, fmt.Errorf("no PersistentVolume names %s: %w", src.ID, storage.ErrNotFound)
}

func (f *fakeRemote) Fetch(ctx context.Context, src *storage.Source, peer storage.Peer, dest string, maxBytes int64, progress func(int64)) (*storage.Fetched, error) {
	f.mu.Lock()
	dir, got := f.dirs[src.ID], f.got
	f.fetched = append(f.fetched, peer)
	f.mu.Unlock()
	if _, err := os.Lstat(dest); err == nil {
		return nil, fmt.Errorf("%s exists", dest)
	}
	if err := os.CopyFS(dest, os.DirFS(dir)); err != nil {
		return nil, err
	}
	progress(1)
	return &got, nil
}

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
	r := &fakeRemote{dirs: map[string]string{snap: src, vol: src},
		got: storage.Fetched{Tree: true, SizeBytes: mib, AccessType: storage.AccessMount}}
	e, p, poolPath := startRemoteEngine(t, r)

	for i, source := range []*storage.Source{{Kind: storage.SourceSnapshot, ID: snap}, {Kind: storage.SourceVolume, ID: vol}} {
		req := provisionReq(fmt.Sprintf("pulled-%d", i))
		req.Requisite, req.Source = here, source
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
		before := len(r.fetched)
		if again, err := e.Provision(context.Background(), p, req); err != nil || again.ID != rec.ID || len(r.fetched) != before {
			t.Errorf("retry: %v, %d more fetches", err, len(r.fetched)-before)
		}
	}
	if len(r.fetched) != 2 || r.fetched[0].Node != "node-b" {
		t.Errorf("fetches: %+v", r.fetched)
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
		r.mu.Lock()
		r.lookErr = errors.New("pv-lister: connection refused")
		r.mu.Unlock()
		defer func() { r.mu.Lock(); r.lookErr = nil; r.mu.Unlock() }()
		req := provisionReq("unknown")
		req.Requisite, req.Source = here, &storage.Source{Kind: storage.SourceSnapshot, ID: storage.SnapshotID("default", "unknown")}
		_, err := e.Provision(context.Background(), p, req)
		checkErr(t, err, storage.ErrUnreachable)
	})
	t.Run("an image into a dir pool", func(t *testing.T) {
		r.mu.Lock()
		r.got.Tree = false
		r.mu.Unlock()
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
