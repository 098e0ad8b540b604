package node_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/locks"
	"github.com/berth-csi/berth/pkg/node"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// localSharedHost is one node of a shared pool on a local directory
// (testutil.SharedDir) that every node of the test uses.
func localSharedHost(t *testing.T, shared, nodeID string) *fixture {
	t.Helper()
	base := filepath.Join(filepath.Dir(shared), nodeID)
	kubelet := filepath.Join(base, "kubelet")
	if err := os.MkdirAll(filepath.Join(kubelet, "pods"), 0o750); err != nil {
		t.Fatal(err)
	}
	e := testengine.Start(t, storage.Config{Pools: []storage.PoolConfig{{Name: "sh", Path: shared, Kind: storage.KindShared}}})
	l := &locks.Set{}
	srv, err := node.New(node.Config{NodeID: nodeID, KubeletDir: kubelet}, e, l)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{srv: srv, engine: e, locks: l, pool: e.DefaultPool(), base: base, kubelet: kubelet}
}

// TestSingleNodeModeAcrossNodes: a shared volume staged and published with a
// single-node mode on node-a is refused on node-b with FailedPrecondition naming
// node-a (the spec's answer for a volume published at another node without a
// MULTI_NODE capability); multi-node modes are never refused.
func TestSingleNodeModeAcrossNodes(t *testing.T) {
	_, shared := testutil.SharedDir(t)
	a, b := localSharedHost(t, shared, "node-a"), localSharedHost(t, shared, "node-b")
	r := a.createVolume(t, "pvc-claimed")
	id := r.ID
	stA := a.stage(t, id, rwo)
	wantCode(t, a.publishStaged(t, id, stA, a.target(t, "pod-a"), rwo, false), codes.OK)

	rwx := mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
	stB := filepath.Join(b.kubelet, "pods", "staging")
	tests := []struct {
		name     string
		call     func() error
		wantCode codes.Code
	}{
		{"stage RWO on node-b", func() error {
			_, err := b.srv.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: stB, VolumeCapability: rwo})
			return err
		}, codes.FailedPrecondition},
		{"stage RWX on node-b", func() error {
			_, err := b.srv.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: stB, VolumeCapability: rwx})
			return err
		}, codes.OK},
		{"publish RWO on node-b", func() error { return b.publishStaged(t, id, stB, b.target(t, "pod-b"), rwo, false) }, codes.FailedPrecondition},
		{"publish RWO again on node-a", func() error { return a.publishStaged(t, id, stA, a.target(t, "pod-a"), rwo, false) }, codes.OK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			wantCode(t, err, tc.wantCode)
			if tc.wantCode == codes.FailedPrecondition {
				msg := status.Convert(err).Message()
				for _, want := range []string{id, "SINGLE_NODE_WRITER", "node node-a"} {
					if !strings.Contains(msg, want) {
						t.Errorf("message %q does not name %q", msg, want)
					}
				}
			}
		})
	}
}
