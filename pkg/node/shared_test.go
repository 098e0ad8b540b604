package node_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/controller"
	"github.com/berth-csi/berth/pkg/locks"
	"github.com/berth-csi/berth/pkg/node"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// sharedHost is one host of a shared pool: its own mount of the GlusterFS volume (the
// engine mounts it at start), its own kubelet dir, its own engine and services.
func sharedHost(t *testing.T, g *testutil.Gluster, nodeID string) *fixture {
	t.Helper()
	base := testutil.ShortTempDir(t)
	g.UnmountAtCleanup(t, base)
	if err := os.MkdirAll(filepath.Join(base, "kubelet", "pods"), 0o750); err != nil {
		t.Fatal(err)
	}
	e := testengine.Start(t, storage.Config{Pools: []storage.PoolConfig{{
		Name: "gl", Path: filepath.Join(base, "pool"), Kind: storage.KindShared, Source: g.Source, FSType: "glusterfs",
	}}})
	l := &locks.Set{}
	srv, err := node.New(node.Config{NodeID: nodeID, KubeletDir: filepath.Join(base, "kubelet")}, e, l)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{srv: srv, engine: e, locks: l, pool: e.DefaultPool(), base: base, kubelet: filepath.Join(base, "kubelet")}
}

func (f *fixture) stage(t *testing.T, id string, vc *csi.VolumeCapability) string {
	t.Helper()
	staging := filepath.Join(f.kubelet, "pods", "staging-"+id[len(id)-8:])
	_, err := f.srv.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: vc})
	wantCode(t, err, codes.OK)
	return staging
}

func (f *fixture) publishStaged(t *testing.T, id, staging, target string, vc *csi.VolumeCapability, readOnly bool) error {
	t.Helper()
	req := publishReq(id, target, vc, readOnly)
	req.StagingTargetPath = staging
	_, err := f.srv.NodePublishVolume(context.Background(), req)
	return err
}

func (f *fixture) health(t *testing.T, id, path string) []string {
	t.Helper()
	resp, err := f.srv.NodeGetVolumeHealth(context.Background(), &csi.NodeGetVolumeHealthRequest{VolumeId: id, VolumePublishPath: path})
	wantCode(t, err, codes.OK)
	var out []string
	for _, h := range resp.GetVolumeHealth().GetHealthStatuses() {
		out = append(out, h.GetStatus().String()+":"+h.GetReason())
	}
	return out
}

// TestSharedPoolOnGlusterFS runs two node services and a central controller, each
// with its own mount of one GlusterFS volume, as three hosts would.
func TestSharedPoolOnGlusterFS(t *testing.T) {
	g := testutil.StartGluster(t)
	a, b := sharedHost(t, g, "node-a"), sharedHost(t, g, "node-b")
	// The controller starts after the nodes: they find its volumes on disk.
	central := sharedHost(t, g, "controller")
	ctrl := controller.New(central.engine, "controller", &locks.Set{})
	rwx := mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
	rox := mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)
	resp, err := ctrl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: "pvc-shared", CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{rwx}, Parameters: map[string]string{"pool": "gl"},
		// A shared pool serves any node: a requisite naming none of this controller's.
		AccessibilityRequirements: &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: map[string]string{node.TopologyKey: "node-a"}}}},
	})
	wantCode(t, err, codes.OK)
	id := resp.GetVolume().GetVolumeId()
	if top := resp.GetVolume().GetAccessibleTopology(); len(top) != 0 {
		t.Errorf("shared volume carries topology %v, want none", top)
	}

	stA, stB := a.stage(t, id, rwx), b.stage(t, id, rwx)
	tA, tB := a.target(t, "pod-a"), b.target(t, "pod-b")
	wantCode(t, a.publishStaged(t, id, stA, tA, rwx, false), codes.OK)
	wantCode(t, b.publishStaged(t, id, stB, tB, rwx, false), codes.OK)

	t.Run("RWX: a write on one node is read on the other", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(tA, "hello"), []byte("from a"), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(tB, "hello"))
		if err != nil || string(got) != "from a" {
			t.Fatalf("read through node b: %q, %v", got, err)
		}
		if err := os.WriteFile(filepath.Join(tB, "reply"), []byte("from b"), 0o644); err != nil {
			t.Fatalf("write through node b: %v", err)
		}
	})

	t.Run("ROX: published read-only, writes fail EROFS", func(t *testing.T) {
		tR := b.target(t, "pod-reader")
		wantCode(t, b.publishStaged(t, id, stB, tR, rox, false), codes.OK)
		got, err := os.ReadFile(filepath.Join(tR, "hello"))
		if err != nil || string(got) != "from a" {
			t.Fatalf("read through the ROX target: %q, %v", got, err)
		}
		err = os.WriteFile(filepath.Join(tR, "nope"), nil, 0o644)
		if !errors.Is(err, unix.EROFS) {
			t.Fatalf("write through the ROX target: %v, want EROFS", err)
		}
		wantCode(t, b.unpublish(id, tR), codes.OK)
	})

	t.Run("healthy while its mount answers", func(t *testing.T) {
		if got := a.health(t, id, tA); len(got) != 0 {
			t.Fatalf("healthy shared volume reports %v", got)
		}
	})

	t.Run("a killed FUSE client is INACCESSIBLE; re-staging recovers", func(t *testing.T) {
		pid := testutil.ClientPID(t, a.pool.Config().Path)
		if err := unix.Kill(pid, unix.SIGKILL); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := os.Stat(filepath.Join(tA, "hello"))
			if errors.Is(err, unix.ENOTCONN) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the mount still answers after its client was killed: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		got := a.health(t, id, tA)
		if len(got) == 0 || got[0] != "INACCESSIBLE:StaleMount" {
			t.Fatalf("health after the client died: %v, want INACCESSIBLE", got)
		}
		_, err := a.srv.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: tA})
		wantCode(t, err, codes.FailedPrecondition)
		// Node b has its own client: unaffected.
		if got := b.health(t, id, tB); len(got) != 0 {
			t.Fatalf("node b's health: %v", got)
		}

		a.stage(t, id, rwx)
		data, err := os.ReadFile(filepath.Join(stA, "reply"))
		if err != nil || string(data) != "from b" {
			t.Fatalf("read through the re-staged path: %q, %v", data, err)
		}
		// The next publish replaces the target's dead mount.
		wantCode(t, a.publishStaged(t, id, stA, tA, rwx, false), codes.OK)
		if data, err := os.ReadFile(filepath.Join(tA, "hello")); err != nil || string(data) != "from a" {
			t.Fatalf("read through the re-published target: %q, %v", data, err)
		}
		if got := a.health(t, id, tA); len(got) != 0 {
			t.Fatalf("health after re-staging: %v", got)
		}
	})

	t.Run("delete by the controller is seen by the nodes", func(t *testing.T) {
		for _, f := range []*fixture{a, b} {
			wantCode(t, f.unpublish(id, filepath.Join(f.kubelet, "pods", map[*fixture]string{a: "pod-a", b: "pod-b"}[f], "volumes", "mount")), codes.OK)
			st := map[*fixture]string{a: stA, b: stB}[f]
			_, err := f.srv.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: st})
			wantCode(t, err, codes.OK)
		}
		_, err := ctrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id})
		wantCode(t, err, codes.OK)
		// Other clients see the deletion once their cached entries expire (GlusterFS's
		// FUSE entry timeout, 1s by default).
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err = a.srv.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: stA, VolumeCapability: rwx})
			if status.Code(err) == codes.NotFound || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		wantCode(t, err, codes.NotFound)
	})
}
