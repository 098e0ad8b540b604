package storage_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
)

const thisNode = "node-a"

// rwoMount is a filesystem capability asking for fsType ("" for none).
func rwoMount(fsType string) storage.Capability {
	return storage.Capability{Access: storage.AccessMount, Mode: storage.SingleNodeWriter, FSType: fsType}
}

var rwoBlock = storage.Capability{Access: storage.AccessBlock, Mode: storage.SingleNodeWriter}

// provisionReq is a request for a 1 MiB volume called name on thisNode.
func provisionReq(name string, caps ...storage.Capability) storage.ProvisionRequest {
	if len(caps) == 0 {
		caps = []storage.Capability{rwoMount("")}
	}
	return storage.ProvisionRequest{Name: name, RequiredBytes: mib, Capabilities: caps, Node: thisNode}
}

// kindEngine starts an engine with a dir pool "default" and an image pool "image".
func kindEngine(t *testing.T) *storage.Engine {
	t.Helper()
	base := t.TempDir()
	return startEngine(t, dirPool(base, "default"),
		storage.PoolConfig{Name: "image", Path: filepath.Join(base, "image"), Kind: storage.KindImage})
}

func mustPool(t *testing.T, e *storage.Engine, name string) *storage.Pool {
	t.Helper()
	p, err := e.Pool(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPoolFor(t *testing.T) {
	tests := []struct {
		name     string
		params   map[string]string
		wantPool string
		wantErr  error
	}{
		{name: "no parameters: the default pool", wantPool: "default"},
		{name: "pool by name", params: map[string]string{"pool": "image"}, wantPool: "image"},
		{name: "a parameter of the pool's kind", params: map[string]string{"pool": "image", storage.ParamFSType: "xfs"}, wantPool: "image"},
		{name: "a parameter of another kind", params: map[string]string{storage.ParamFSType: "xfs"}, wantErr: storage.ErrInvalid},
		{name: "unknown parameter", params: map[string]string{"foo": "bar"}, wantErr: storage.ErrInvalid},
		// Not ErrNotFound: a StorageClass naming a pool this node lacks can never succeed.
		{name: "unknown pool", params: map[string]string{"pool": "nope"}, wantErr: storage.ErrInvalid},
		{name: "hostile pool name", params: map[string]string{"pool": "../etc"}, wantErr: storage.ErrInvalid},
	}
	e := kindEngine(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := e.PoolFor(tc.params)
			checkErr(t, err, tc.wantErr)
			if err != nil && errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("error %v also matches ErrNotFound", err)
			}
			if err == nil && p.Name() != tc.wantPool {
				t.Fatalf("pool %s, want %s", p.Name(), tc.wantPool)
			}
		})
	}
}

// TestProvisionCapabilities: the pool decides which capabilities it serves.
func TestProvisionCapabilities(t *testing.T) {
	multi := storage.Capability{Access: storage.AccessMount, Mode: storage.MultiNodeMultiWriter}
	tests := []struct {
		name    string
		caps    []storage.Capability
		wantErr error
	}{
		{name: "single node writer", caps: []storage.Capability{rwoMount("")}},
		{name: "none", caps: []storage.Capability{}, wantErr: storage.ErrInvalid},
		{name: "unknown mode", caps: []storage.Capability{{Access: storage.AccessMount}}, wantErr: storage.ErrInvalid},
		{name: "multi-node on a node-local pool", caps: []storage.Capability{rwoMount(""), multi}, wantErr: storage.ErrUnsupported},
		{name: "block on a dir pool", caps: []storage.Capability{rwoBlock}, wantErr: storage.ErrUnsupported},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := kindEngine(t)
			req := provisionReq("pvc-1")
			req.Capabilities = tc.caps
			_, err := e.Provision(context.Background(), e.DefaultPool(), req)
			checkErr(t, err, tc.wantErr)
		})
	}
}

// TestProvisionFilesystem: an image volume's kind chooses its filesystem: the one
// asked for, else its source's, else the kind's default; other kinds record none.
func TestProvisionFilesystem(t *testing.T) {
	tests := []struct {
		name   string
		pool   string
		params map[string]string
		caps   []storage.Capability
		// source: the request copies a volume of the same pool created with
		// sourceFS asked for.
		source, sourceFS string
		wantFS           string
		wantErr          error
	}{
		{name: "default", pool: "image", wantFS: storage.DefaultImageFSType},
		{name: "fsType parameter", pool: "image", params: map[string]string{storage.ParamFSType: "xfs"}, wantFS: "xfs"},
		{name: "fs_type of the capability", pool: "image", caps: []storage.Capability{rwoMount("xfs")}, wantFS: "xfs"},
		{name: "parameter and capability agree", pool: "image", params: map[string]string{storage.ParamFSType: "xfs"},
			caps: []storage.Capability{rwoMount("xfs")}, wantFS: "xfs"},
		{name: "parameter and capability conflict", pool: "image", params: map[string]string{storage.ParamFSType: "ext4"},
			caps: []storage.Capability{rwoMount("xfs")}, wantErr: storage.ErrInvalid},
		{name: "two capabilities conflict", pool: "image", caps: []storage.Capability{rwoMount("xfs"), rwoMount("ext4")},
			wantErr: storage.ErrInvalid},
		{name: "a filesystem the kind cannot make", pool: "image", params: map[string]string{storage.ParamFSType: "btrfs"},
			wantErr: storage.ErrInvalid},
		{name: "block volume", pool: "image", caps: []storage.Capability{rwoBlock}},
		{name: "a copy holds its source's filesystem", pool: "image", source: "pvc-src", sourceFS: "xfs", wantFS: "xfs"},
		{name: "a copy asked for another filesystem", pool: "image", source: "pvc-src", sourceFS: "xfs",
			params: map[string]string{storage.ParamFSType: "ext4"}, wantErr: storage.ErrInvalid},
		{name: "dir pool", pool: "default"},
		{name: "dir pool, fsType parameter", pool: "default", params: map[string]string{storage.ParamFSType: "xfs"},
			wantErr: storage.ErrInvalid},
		// A directory volume has no filesystem of its own: the capability's is the pool's.
		{name: "dir pool, fs_type asked", pool: "default", caps: []storage.Capability{rwoMount("xfs")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := kindEngine(t)
			p := mustPool(t, e, tc.pool)
			ctx := context.Background()
			req := provisionReq("pvc-1", tc.caps...)
			req.Parameters = tc.params
			if tc.source != "" {
				src, err := e.Provision(ctx, p, storage.ProvisionRequest{Name: tc.source, RequiredBytes: mib, Node: thisNode,
					Capabilities: []storage.Capability{rwoMount(tc.sourceFS)}})
				if err != nil {
					t.Fatalf("source: %v", err)
				}
				req.Source = &storage.Source{Kind: storage.SourceVolume, ID: src.ID}
			}
			r, err := e.Provision(ctx, p, req)
			checkErr(t, err, tc.wantErr)
			if err != nil {
				return
			}
			if r.FSType != tc.wantFS {
				t.Fatalf("fsType %q, want %q", r.FSType, tc.wantFS)
			}
			if r.Parameters["pool"] != tc.pool {
				t.Fatalf("recorded parameters %v lack pool %s", r.Parameters, tc.pool)
			}
			// The same request again finds the same volume: the choice is a pure
			// function of the request.
			again, err := e.Provision(ctx, p, req)
			if err != nil || again.ID != r.ID {
				t.Fatalf("repeated request: %v, %v; want %s", again, err, r.ID)
			}
		})
	}
}

func TestProvisionTopology(t *testing.T) {
	seg := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name      string
		requisite []map[string]string
		wantErr   error
	}{
		{name: "no requirement"},
		{name: "this node", requisite: []map[string]string{seg(storage.TopologyKey, thisNode)}},
		{name: "this node among others", requisite: []map[string]string{seg(storage.TopologyKey, "node-b"), seg(storage.TopologyKey, thisNode)}},
		{name: "another node", requisite: []map[string]string{seg(storage.TopologyKey, "node-b")}, wantErr: storage.ErrUnreachable},
		{name: "another key", requisite: []map[string]string{seg("topology.kubernetes.io/zone", thisNode)}, wantErr: storage.ErrUnreachable},
		{name: "an empty topology", requisite: []map[string]string{nil}, wantErr: storage.ErrUnreachable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := kindEngine(t)
			req := provisionReq("pvc-1")
			req.Requisite = tc.requisite
			_, err := e.Provision(context.Background(), e.DefaultPool(), req)
			checkErr(t, err, tc.wantErr)
			if err != nil && len(e.AllVolumes()) != 0 {
				t.Fatal("a refused request left a volume")
			}
		})
	}
}

// TestAccessibleFrom: a node-local pool's volumes are reached from its node only; a
// shared pool's from anywhere, as every node mounts its root.
func TestAccessibleFrom(t *testing.T) {
	e, err := storage.New(storage.Config{Pools: []storage.PoolConfig{
		dirPool(t.TempDir(), "local"),
		{Name: "shared", Path: filepath.Join(t.TempDir(), "shared"), Kind: storage.KindShared},
	}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		pool     string
		segments map[string]string
		want     bool
	}{
		{"local", map[string]string{storage.TopologyKey: thisNode}, true},
		{"local", map[string]string{storage.TopologyKey: "node-b"}, false},
		{"local", map[string]string{"topology.kubernetes.io/zone": thisNode}, false},
		{"local", nil, false},
		{"shared", map[string]string{storage.TopologyKey: "node-b"}, true},
		{"shared", nil, true},
	}
	for _, tc := range tests {
		if got := mustPool(t, e, tc.pool).AccessibleFrom(thisNode, tc.segments); got != tc.want {
			t.Errorf("pool %s from %v: %t, want %t", tc.pool, tc.segments, got, tc.want)
		}
	}
}

// TestProvisionNameAcrossPools: the name is the idempotency key across pools, so the
// same name asked of another pool is a request with other parameters.
func TestProvisionNameAcrossPools(t *testing.T) {
	base := t.TempDir()
	e := startEngine(t, dirPool(base, "a"), dirPool(base, "b"))
	ctx := context.Background()
	first, err := e.Provision(ctx, mustPool(t, e, "a"), provisionReq("pvc-1"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.Provision(ctx, mustPool(t, e, "b"), provisionReq("pvc-1"))
	checkErr(t, err, storage.ErrExists)
	if n := len(e.AllVolumes()); n != 1 {
		t.Fatalf("%d volumes, want 1", n)
	}
	again, err := e.Provision(ctx, mustPool(t, e, "a"), provisionReq("pvc-1"))
	if err != nil || again.ID != first.ID {
		t.Fatalf("same pool again: %v, %v; want %s", again, err, first.ID)
	}
	if _, err := e.Provision(ctx, mustPool(t, e, "b"), provisionReq("pvc-2")); err != nil {
		t.Fatalf("another name in pool b: %v", err)
	}
}

func TestEngineDeleteVolume(t *testing.T) {
	const target = "/var/lib/kubelet/pods/p/volumes/x/mount"
	tests := []struct {
		name string
		// setup prepares the engine and returns the ID to delete.
		setup      func(t *testing.T, e *storage.Engine) string
		wantErr    error
		wantExists bool // the volume setup created is still there
	}{
		{name: "existing", setup: func(t *testing.T, e *storage.Engine) string {
			return mustCreate(t, e.DefaultPool(), "pvc-1", mib).ID
		}},
		{name: "unknown Berth ID", setup: func(*testing.T, *storage.Engine) string { return "b1-default-" + pvcHash }},
		{name: "foreign ID", setup: func(*testing.T, *storage.Engine) string { return "pvc-1234" }},
		{name: "hostile ID", setup: func(*testing.T, *storage.Engine) string { return "../x" }, wantErr: storage.ErrInvalid},
		// The node that holds the pool may hold the volume: never "already gone".
		{name: "pool this engine lacks", setup: func(*testing.T, *storage.Engine) string { return "b1-elsewhere-" + pvcHash },
			wantErr: storage.ErrPrecondition},
		{name: "adopted", setup: func(*testing.T, *storage.Engine) string { return storage.AdoptedPrefix + "srv-data" }},
		{name: "published", setup: func(t *testing.T, e *storage.Engine) string {
			id := mustCreate(t, e.DefaultPool(), "pvc-1", mib).ID
			e.AddPublication(id, storage.Publication{TargetPath: target})
			return id
		}, wantErr: storage.ErrInUse, wantExists: true},
		// An inline volume is published under kubelet's volume ID.
		{name: "ephemeral, published", setup: func(t *testing.T, e *storage.Engine) string {
			r, err := e.DefaultPool().Create(context.Background(), storage.CreateRequest{
				Name: storage.EphemeralName("csi-abc"), Ephemeral: true, RequiredBytes: mib, AccessType: storage.AccessMount})
			if err != nil {
				t.Fatal(err)
			}
			e.AddPublication("csi-abc", storage.Publication{TargetPath: target})
			return r.ID
		}, wantErr: storage.ErrInUse, wantExists: true},
		{name: "published once, unpublished", setup: func(t *testing.T, e *storage.Engine) string {
			id := mustCreate(t, e.DefaultPool(), "pvc-1", mib).ID
			e.AddPublication(id, storage.Publication{TargetPath: target})
			e.RemovePublication(id, target)
			return id
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := startEngine(t, dirPool(t.TempDir(), "default"))
			id := tc.setup(t, e)
			err := e.DeleteVolume(context.Background(), id)
			checkErr(t, err, tc.wantErr)
			if tc.wantErr == storage.ErrPrecondition && errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("error %v also matches ErrNotFound", err)
			}
			if _, _, err := e.Volume(id); (err == nil) != tc.wantExists {
				t.Fatalf("after delete, lookup: %v; want the volume kept %t", err, tc.wantExists)
			}
		})
	}
}

func TestEngineDeleteSnapshot(t *testing.T) {
	tests := []struct {
		name, id string
		wantErr  error
	}{
		{name: "unknown Berth ID", id: "s1-default-" + pvcHash},
		{name: "foreign ID", id: "snapshot-1"},
		{name: "hostile ID", id: "../x", wantErr: storage.ErrInvalid},
		{name: "pool this engine lacks", id: "s1-elsewhere-" + pvcHash, wantErr: storage.ErrPrecondition},
	}
	e := startEngine(t, dirPool(t.TempDir(), "default"))
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := e.DeleteSnapshot(context.Background(), tc.id)
			checkErr(t, err, tc.wantErr)
			if tc.wantErr == storage.ErrPrecondition && errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("error %v also matches ErrNotFound", err)
			}
		})
	}
}

// TestImageSizeNearTheMaximum: a size that rounding up to the image step would carry
// past the largest int64 is out of range, for a create and for an expansion alike
// (never a negative size reaching the disk).
func TestImageSizeNearTheMaximum(t *testing.T) {
	e := kindEngine(t)
	p := mustPool(t, e, "image")
	r, err := e.Provision(context.Background(), p, provisionReq("pvc-small"))
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int64{math.MaxInt64, math.MaxInt64 - 4094} {
		t.Run(fmt.Sprintf("create %d", size), func(t *testing.T) {
			req := provisionReq("pvc-huge")
			req.RequiredBytes = size
			_, err := e.Provision(context.Background(), p, req)
			checkErr(t, err, storage.ErrOutOfRange)
		})
		t.Run(fmt.Sprintf("expand %d", size), func(t *testing.T) {
			_, err := p.Expand(context.Background(), r.Hash(), size, 0)
			checkErr(t, err, storage.ErrOutOfRange)
			if got, _ := p.Get(r.Hash()); got.CapacityBytes != mib {
				t.Fatalf("capacity after a refused expansion: %d, want %d", got.CapacityBytes, mib)
			}
		})
	}
}

// TestProvisionSourceOnAnotherNode: a restore or clone whose source this node's
// node-local pool lacks is ErrUnreachable when the request names topologies (another
// node's pool of that name may hold it, and the CO may try that node), ErrNotFound
// without topologies, for an ID that is not Berth's, or in a shared pool.
func TestProvisionSourceOnAnotherNode(t *testing.T) {
	testutil.RequireRoot(t)
	here := []map[string]string{{storage.TopologyKey: thisNode}}
	base := t.TempDir()
	shared := filepath.Join(base, "shared")
	testutil.MountTmpfs(t, shared, 16*mib)
	e := startEngine(t, dirPool(base, "default"),
		storage.PoolConfig{Name: "shared", Path: shared, Kind: storage.KindShared})
	tests := []struct {
		name, pool, kind, id string
		requisite            []map[string]string
		wantErr              error
	}{
		{"snapshot, topology", "default", storage.SourceSnapshot, storage.SnapshotID("default", "elsewhere"), here, storage.ErrUnreachable},
		{"volume, topology", "default", storage.SourceVolume, storage.VolumeID("default", "elsewhere"), here, storage.ErrUnreachable},
		{"snapshot, no topology", "default", storage.SourceSnapshot, storage.SnapshotID("default", "elsewhere"), nil, storage.ErrNotFound},
		{"not Berth's ID, topology", "default", storage.SourceSnapshot, "snap-0001", here, storage.ErrNotFound},
		{"shared pool, topology", "shared", storage.SourceSnapshot, storage.SnapshotID("shared", "elsewhere"), here, storage.ErrNotFound},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := e.Pool(tc.pool)
			if err != nil {
				t.Fatal(err)
			}
			req := provisionReq(fmt.Sprintf("restored-%d", i))
			req.Parameters = map[string]string{storage.ParamPool: tc.pool}
			req.Requisite = tc.requisite
			req.Source = &storage.Source{Kind: tc.kind, ID: tc.id}
			_, err = e.Provision(context.Background(), p, req)
			checkErr(t, err, tc.wantErr)
			if errors.Is(tc.wantErr, storage.ErrUnreachable) && (err == nil || !strings.Contains(err.Error(), "another node may hold it")) {
				t.Fatalf("error %v does not say another node may hold the source", err)
			}
			if len(e.AllVolumes()) != 0 {
				t.Fatal("a refused request left a volume")
			}
		})
	}
}
