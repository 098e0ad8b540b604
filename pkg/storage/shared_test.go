package storage_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
)

// glusterPool starts an engine on its own mount of g's volume (one "host").
func glusterPool(t *testing.T, g *testutil.Gluster, quota bool) *storage.Pool {
	t.Helper()
	path := filepath.Join(testutil.ShortTempDir(t), "pool")
	g.UnmountAtCleanup(t, path)
	return testengine.Start(t, storage.Config{Pools: []storage.PoolConfig{{
		Name: "gl", Path: path, Kind: storage.KindShared, Source: g.Source, FSType: "glusterfs", GlusterQuota: quota,
	}}}).DefaultPool()
}

// TestSharedPoolTwoHostsOnGlusterFS: two engines on two GlusterFS clients create the
// same volume at once (the OFD lock lets one build it, the other is busy or finds
// it), and a volume carries its GlusterFS quota limit once committed.
func TestSharedPoolTwoHostsOnGlusterFS(t *testing.T) {
	g := testutil.StartGluster(t)
	a, b := glusterPool(t, g, true), glusterPool(t, g, true)
	req := storage.CreateRequest{Name: "pvc-race", RequiredBytes: 32 << 20, AccessType: storage.AccessMount, Parameters: map[string]string{"pool": "gl"}}
	var wg sync.WaitGroup
	ids := make(chan string, 8)
	for i := range 8 {
		p := []*storage.Pool{a, b}[i%2]
		wg.Go(func() {
			r, err := p.Create(context.Background(), req)
			switch {
			case errors.Is(err, storage.ErrBusy):
			case err != nil:
				t.Errorf("create: %v", err)
			default:
				ids <- r.ID
			}
		})
	}
	wg.Wait()
	close(ids)
	n := 0
	for id := range ids {
		n++
		if id != storage.VolumeID("gl", "pvc-race") {
			t.Errorf("created %s", id)
		}
	}
	if n == 0 {
		t.Fatal("every concurrent create was busy")
	}
	entries, _ := os.ReadDir(filepath.Join(a.Config().Path, "volumes"))
	if len(entries) != 1 {
		t.Fatalf("volumes/ holds %d entries, want 1", len(entries))
	}
	// Host b sees the volume whichever host built it, and so does its capacity.
	r, err := b.Get(entries[0].Name())
	if err != nil || r.CapacityBytes != 32<<20 {
		t.Fatalf("host b: %+v, %v", r, err)
	}
	out := g.QuotaLimit(t, "/volumes/"+r.Hash()+"/data")
	if !strings.Contains(out, "32.0MB") {
		t.Errorf("GlusterFS quota of the volume:\n%s\nwant a 32.0MB limit", out)
	}
	if _, err := a.Expand(context.Background(), r.Hash(), 48<<20, 0); err != nil {
		t.Fatal(err)
	}
	if out := g.QuotaLimit(t, "/volumes/"+r.Hash()+"/data"); !strings.Contains(out, "48.0MB") {
		t.Errorf("GlusterFS quota after expansion:\n%s\nwant a 48.0MB limit", out)
	}
	// GlusterFS's FUSE client caches names for about a second (entry-timeout), so
	// another host sees the replaced record within that window: poll, bounded.
	if r, err := eventually(func() (*storage.Record, error) { return b.Get(r.Hash()) },
		func(r *storage.Record) bool { return r.CapacityBytes == 48<<20 }); err != nil || r.CapacityBytes != 48<<20 {
		t.Errorf("host b after expansion on a: %+v, %v", r, err)
	}
	if err := b.Delete(context.Background(), r.Hash()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(a.Records()) != 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if len(a.Records()) != 0 {
		t.Errorf("host a still lists %v after b deleted it", a.Records())
	}
}

// TestOperatorMountedPoolUnmountedOnGlusterFS is the user's report: a GlusterFS
// volume the operator mounted at the pool path is unmounted under a running engine.
// DeleteVolume must not answer success while the data stays on the brick, and
// nothing may be created on the local directory beneath; once the volume is mounted
// again the pool is served again, and the retried deletion removes the data.
func TestOperatorMountedPoolUnmountedOnGlusterFS(t *testing.T) {
	g := testutil.StartGluster(t)
	path := filepath.Join(testutil.ShortTempDir(t), "pool")
	g.Mount(t, path)
	e := testengine.StartWith(t, storage.Config{Pools: []storage.PoolConfig{{Name: "gl", Path: path, Kind: storage.KindShared}}},
		testengine.Options{PoolRetry: 50 * time.Millisecond})
	if err := e.Unserved(); err != nil {
		t.Fatal(err)
	}
	p := e.DefaultPool()
	r := mustCreate(t, p, "pvc-1", 32*mib)
	writeFile(t, filepath.Join(p.DataPath(r.Hash()), "file"), "data")
	onBrick := filepath.Join(g.Brick, "volumes", r.Hash(), "data", "file")
	assertContent(t, onBrick, "data")

	testutil.Run(t, "umount", path)
	ctx := quiet()
	if err := e.DeleteVolume(ctx, r.ID); !errors.Is(err, storage.ErrNotReady) || !strings.Contains(err.Error(), path) {
		t.Fatalf("DeleteVolume with the pool unmounted: %v, want ErrNotReady naming %s", err, path)
	}
	if _, _, err := e.Volume(r.ID); !errors.Is(err, storage.ErrNotReady) {
		t.Errorf("Volume with the pool unmounted: %v, want ErrNotReady", err)
	}
	assertContent(t, onBrick, "data")
	if local := tree(t, path); len(local) > 0 {
		t.Errorf("created on the local disk beneath the pool path: %v", local)
	}
	if err := e.UnservedPools(); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("UnservedPools() = %v, want the pool at %s", err, path)
	}

	testutil.Run(t, "mount", "-t", "glusterfs", g.Source, path)
	deadline := time.Now().Add(10 * time.Second)
	for e.UnservedPools() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("pool not served again once mounted: %v", e.UnservedPools())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := e.DeleteVolume(ctx, r.ID); err != nil {
		t.Fatalf("DeleteVolume retried once mounted again: %v", err)
	}
	assertMissing(t, filepath.Join(g.Brick, "volumes", r.Hash()))
	waitEmpty(t, filepath.Join(g.Brick, "trash"))
}

// eventually polls get until ok accepts its result or 5 s pass, and returns the last.
func eventually(get func() (*storage.Record, error), ok func(*storage.Record) bool) (*storage.Record, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		r, err := get()
		if (err == nil && ok(r)) || time.Now().After(deadline) {
			return r, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
