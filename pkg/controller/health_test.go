package controller_test

import (
	"context"
	"os"
	"slices"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

func TestControllerGetVolume(t *testing.T) {
	const existing = "<existing>"
	tests := []struct {
		name          string
		id            string
		published     bool
		wantCode      codes.Code
		wantPublished []string
	}{
		{"existing", existing, false, codes.OK, nil},
		{"published", existing, true, codes.OK, []string{testNode}},
		{"unknown", unknownID, false, codes.NotFound, nil},
		{"missing id", "", false, codes.InvalidArgument, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			id := tc.id
			if id == existing {
				id = f.mustCreate(t, "pvc-get").GetVolumeId()
			}
			if tc.published {
				f.engine.AddPublication(id, storage.Publication{TargetPath: "/var/lib/kubelet/pods/p/volumes/v/mount"})
			}
			resp, err := f.srv.ControllerGetVolume(context.Background(), &csi.ControllerGetVolumeRequest{VolumeId: id})
			wantCode(t, err, tc.wantCode)
			if err != nil {
				return
			}
			if resp.GetVolume().GetVolumeId() != id || resp.GetVolume().GetCapacityBytes() != 1<<20 {
				t.Fatalf("volume %v, want %s of 1 MiB", resp.GetVolume(), id)
			}
			if resp.GetStatus() == nil {
				t.Fatal("status is required")
			}
			if got := resp.GetStatus().GetPublishedNodeIds(); !slices.Equal(got, tc.wantPublished) {
				t.Fatalf("published_node_ids %v, want %v", got, tc.wantPublished)
			}
		})
	}
}

func TestControllerGetVolumeHealth(t *testing.T) {
	const existing = "<existing>"
	tests := []struct {
		name       string
		id         string
		setup      func(t *testing.T, f *fixture, id string)
		wantCode   codes.Code
		wantStatus []csi.VolumeHealthErrorType
	}{
		{"healthy", existing, nil, codes.OK, nil},
		{"data dir removed", existing, func(t *testing.T, f *fixture, id string) {
			if err := os.RemoveAll(f.dataPath(t, id)); err != nil {
				t.Fatal(err)
			}
		}, codes.OK, []csi.VolumeHealthErrorType{csi.VolumeHealthErrorType_INACCESSIBLE}},
		{"data dir replaced by a file", existing, func(t *testing.T, f *fixture, id string) {
			data := f.dataPath(t, id)
			if err := os.RemoveAll(data); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(data, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, codes.OK, []csi.VolumeHealthErrorType{csi.VolumeHealthErrorType_INACCESSIBLE}},
		{"data dir replaced by a symlink", existing, func(t *testing.T, f *fixture, id string) {
			data := f.dataPath(t, id)
			if err := os.RemoveAll(data); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("/", data); err != nil {
				t.Fatal(err)
			}
		}, codes.OK, []csi.VolumeHealthErrorType{csi.VolumeHealthErrorType_INACCESSIBLE}},
		{"unknown volume", unknownID, nil, codes.NotFound, nil},
		{"missing id", "", nil, codes.InvalidArgument, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			id := tc.id
			if id == existing {
				id = f.mustCreate(t, "pvc-health").GetVolumeId()
			}
			if tc.setup != nil {
				tc.setup(t, f, id)
			}
			resp, err := f.srv.ControllerGetVolumeHealth(context.Background(), &csi.ControllerGetVolumeHealthRequest{VolumeId: id})
			wantCode(t, err, tc.wantCode)
			if err != nil {
				return
			}
			h := resp.GetVolumeHealth()
			if h.GetVolumeId() != id {
				t.Fatalf("volume_id %q, want %q", h.GetVolumeId(), id)
			}
			var got []csi.VolumeHealthErrorType
			for _, e := range h.GetHealthStatuses() {
				got = append(got, e.GetStatus())
				if e.GetReason() == "" {
					t.Errorf("entry %v has no reason", e)
				}
			}
			if !slices.Equal(got, tc.wantStatus) {
				t.Fatalf("health statuses %v, want %v", got, tc.wantStatus)
			}
		})
	}
}

func TestControllerListVolumeHealth(t *testing.T) {
	f := newFixture(t)
	ids := f.createN(t, 5)
	broken := []string{ids[1], ids[3], ids[4]}
	for _, id := range broken {
		if err := os.RemoveAll(f.dataPath(t, id)); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := f.srv.ControllerListVolumeHealth(context.Background(), &csi.ControllerListVolumeHealthRequest{})
	wantCode(t, err, codes.OK)
	var got []string
	for _, h := range resp.GetEntries() {
		got = append(got, h.GetVolumeId())
		if len(h.GetHealthStatuses()) == 0 || h.GetHealthStatuses()[0].GetStatus() != csi.VolumeHealthErrorType_INACCESSIBLE {
			t.Errorf("volume %s: statuses %v, want INACCESSIBLE", h.GetVolumeId(), h.GetHealthStatuses())
		}
	}
	if !slices.Equal(got, broken) {
		t.Fatalf("listed %v, want only the abnormal %v", got, broken)
	}

	// Paged: two pages of abnormal volumes only.
	var paged []string
	token := ""
	for range 10 {
		resp, err := f.srv.ControllerListVolumeHealth(context.Background(),
			&csi.ControllerListVolumeHealthRequest{MaxEntries: 2, StartingToken: token})
		wantCode(t, err, codes.OK)
		if len(resp.GetEntries()) > 2 {
			t.Fatalf("%d entries for max_entries 2", len(resp.GetEntries()))
		}
		for _, h := range resp.GetEntries() {
			paged = append(paged, h.GetVolumeId())
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
	}
	if !slices.Equal(paged, broken) {
		t.Fatalf("paged %v, want %v", paged, broken)
	}
}

func TestControllerListVolumeHealthRequests(t *testing.T) {
	tests := []struct {
		name     string
		req      *csi.ControllerListVolumeHealthRequest
		wantCode codes.Code
	}{
		{"all healthy", &csi.ControllerListVolumeHealthRequest{}, codes.OK},
		{"negative max entries", &csi.ControllerListVolumeHealthRequest{MaxEntries: -1}, codes.InvalidArgument},
		{"bad token", &csi.ControllerListVolumeHealthRequest{StartingToken: "garbage"}, codes.Aborted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.createN(t, 2)
			resp, err := f.srv.ControllerListVolumeHealth(context.Background(), tc.req)
			wantCode(t, err, tc.wantCode)
			if len(resp.GetEntries()) != 0 {
				t.Fatalf("healthy volumes listed: %v", resp.GetEntries())
			}
		})
	}
}

func TestControllerGetCapabilities(t *testing.T) {
	f := newFixture(t, dirPool(noDeviceDir(t), "default"))
	resp, err := f.srv.ControllerGetCapabilities(context.Background(), &csi.ControllerGetCapabilitiesRequest{})
	wantCode(t, err, codes.OK)
	var got []csi.ControllerServiceCapability_RPC_Type
	for _, c := range resp.GetCapabilities() {
		got = append(got, c.GetRpc().GetType())
	}
	slices.Sort(got)
	want := []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_GET_VOLUME,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_LIST_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("capabilities %v, want %v", got, want)
	}
}

// TestControllerUnadvertisedRPCs checks that what is not advertised is not served
// either: a CO that calls it anyway gets Unimplemented, not a half implementation.
func TestControllerUnadvertisedRPCs(t *testing.T) {
	f := newFixture(t, dirPool(noDeviceDir(t), "default"))
	id := f.mustCreate(t, "pvc-unadvertised").GetVolumeId()
	ctx := context.Background()
	var s csi.ControllerServer = f.srv
	calls := map[string]func() error{
		"ControllerPublishVolume": func() error {
			_, err := s.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: testNode, VolumeCapability: rwo})
			return err
		},
		"ControllerUnpublishVolume": func() error {
			_, err := s.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: testNode})
			return err
		},
		"ControllerExpandVolume": func() error {
			_, err := s.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 20}})
			return err
		},
		"ControllerModifyVolume": func() error {
			_, err := s.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: id})
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) { wantCode(t, call(), codes.Unimplemented) })
	}
	if !f.exists(id) {
		t.Fatal("volume vanished")
	}
}
