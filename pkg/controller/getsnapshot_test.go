package controller_test

import (
	"context"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// TestGetSnapshot: a snapshot is reported with the very fields ListSnapshots gives
// it; an empty or invalid ID is InvalidArgument; an ID that names no snapshot here
// (unknown, of a pool this node lacks, not in Berth's format) is NotFound.
func TestGetSnapshot(t *testing.T) {
	f := newFixture(t, dirPool(t.TempDir(), "p"))
	src := f.create(t, "a", "p", 1<<20, nil)
	snap := f.snapshot(t, "snap", src, false)

	list, err := f.srv.ListSnapshots(context.Background(), &csi.ListSnapshotsRequest{SnapshotId: snap.GetSnapshotId()})
	wantCode(t, err, codes.OK)
	if len(list.GetEntries()) != 1 {
		t.Fatalf("ListSnapshots by ID: %d entries, want 1", len(list.GetEntries()))
	}
	tests := []struct {
		name     string
		req      *csi.GetSnapshotRequest
		want     *csi.Snapshot
		wantCode codes.Code
	}{
		{"existing", &csi.GetSnapshotRequest{SnapshotId: snap.GetSnapshotId()}, list.GetEntries()[0].GetSnapshot(), codes.OK},
		{"empty ID", &csi.GetSnapshotRequest{}, nil, codes.InvalidArgument},
		{"ID that is no valid name", &csi.GetSnapshotRequest{SnapshotId: "../" + snap.GetSnapshotId()}, nil, codes.InvalidArgument},
		{"unknown", &csi.GetSnapshotRequest{SnapshotId: "s1-p-0123456789abcdef0123456789abcdef"}, nil, codes.NotFound},
		{"of a pool not configured here", &csi.GetSnapshotRequest{SnapshotId: "s1-elsewhere-0123456789abcdef0123456789abcdef"}, nil, codes.NotFound},
		{"not in Berth's format", &csi.GetSnapshotRequest{SnapshotId: "none-exist-id"}, nil, codes.NotFound},
		{"a volume's ID", &csi.GetSnapshotRequest{SnapshotId: src}, nil, codes.NotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := f.srv.GetSnapshot(context.Background(), tc.req)
			wantCode(t, err, tc.wantCode)
			if !proto.Equal(resp.GetSnapshot(), tc.want) {
				t.Fatalf("GetSnapshot: %v, want %v", resp.GetSnapshot(), tc.want)
			}
		})
	}

	// Deleted: NotFound, as the spec says of a snapshot that does not exist.
	_, err = f.srv.DeleteSnapshot(context.Background(), &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId()})
	wantCode(t, err, codes.OK)
	_, err = f.srv.GetSnapshot(context.Background(), &csi.GetSnapshotRequest{SnapshotId: snap.GetSnapshotId()})
	wantCode(t, err, codes.NotFound)
}

// TestGetSnapshotAdvertised: GET_SNAPSHOT is among the controller's capabilities.
func TestGetSnapshotAdvertised(t *testing.T) {
	f := newFixture(t, dirPool(t.TempDir(), "p"))
	if !f.hasCap(t, csi.ControllerServiceCapability_RPC_GET_SNAPSHOT) {
		t.Fatal("GET_SNAPSHOT is not advertised")
	}
}

// hasCap reports whether the controller advertises c.
func (f *fixture) hasCap(t *testing.T, c csi.ControllerServiceCapability_RPC_Type) bool {
	t.Helper()
	resp, err := f.srv.ControllerGetCapabilities(context.Background(), &csi.ControllerGetCapabilitiesRequest{})
	wantCode(t, err, codes.OK)
	for _, got := range resp.GetCapabilities() {
		if got.GetRpc().GetType() == c {
			return true
		}
	}
	return false
}
