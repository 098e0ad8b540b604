package controller_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/controller"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

func TestGetCapacity(t *testing.T) {
	topo := func(k, v string) *csi.Topology { return &csi.Topology{Segments: map[string]string{k: v}} }
	tests := []struct {
		name     string
		req      *csi.GetCapacityRequest
		wantCode codes.Code
		wantZero bool
	}{
		{"default pool", &csi.GetCapacityRequest{}, codes.OK, false},
		{"named pool", &csi.GetCapacityRequest{Parameters: map[string]string{controller.ParamPool: "default"}}, codes.OK, false},
		{"this node", &csi.GetCapacityRequest{AccessibleTopology: topo(controller.TopologyKey, testNode)}, codes.OK, false},
		{"supported capability", &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{rwo}}, codes.OK, false},
		{"another node", &csi.GetCapacityRequest{AccessibleTopology: topo(controller.TopologyKey, "node-b")}, codes.OK, true},
		{"another topology key", &csi.GetCapacityRequest{AccessibleTopology: topo("topology.kubernetes.io/zone", testNode)}, codes.OK, true},
		{"MULTI_NODE capability", &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{
			mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}}, codes.OK, true},
		{"block on a dir pool", &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{
			blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)}}, codes.OK, true},
		{"unknown pool", &csi.GetCapacityRequest{Parameters: map[string]string{controller.ParamPool: "nope"}}, codes.InvalidArgument, false},
		{"unknown parameter", &csi.GetCapacityRequest{Parameters: map[string]string{"foo": "bar"}}, codes.InvalidArgument, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			resp, err := f.srv.GetCapacity(context.Background(), tc.req)
			wantCode(t, err, tc.wantCode)
			if err != nil {
				return
			}
			if tc.wantZero {
				if resp.GetAvailableCapacity() != 0 || resp.GetMaximumVolumeSize().GetValue() != 0 {
					t.Fatalf("capacity %d, maximum %v, want zero", resp.GetAvailableCapacity(), resp.GetMaximumVolumeSize())
				}
				return
			}
			if resp.GetAvailableCapacity() <= 0 {
				t.Fatalf("available_capacity %d, want > 0", resp.GetAvailableCapacity())
			}
			maxSize := resp.GetMaximumVolumeSize()
			if maxSize == nil || maxSize.GetValue() <= 0 || maxSize.GetValue() > resp.GetAvailableCapacity() {
				t.Fatalf("maximum_volume_size %v with available_capacity %d", maxSize, resp.GetAvailableCapacity())
			}
		})
	}
}

// tmpfsPool is a dir pool on a fresh tmpfs of sizeBytes, so its free space is known
// and changes only with what the test does.
func tmpfsPool(t *testing.T, sizeBytes int64, overcommit bool) storage.PoolConfig {
	t.Helper()
	testutil.RequireRoot(t)
	fs := filepath.Join(t.TempDir(), "fs")
	testutil.MountTmpfs(t, fs, sizeBytes)
	pc := dirPool(fs, "default")
	pc.Overcommit = overcommit
	return pc
}

func (f *fixture) capacity(t *testing.T) int64 {
	t.Helper()
	resp, err := f.srv.GetCapacity(context.Background(), &csi.GetCapacityRequest{})
	wantCode(t, err, codes.OK)
	if resp.GetMaximumVolumeSize() == nil {
		t.Fatal("maximum_volume_size is not set")
	}
	return resp.GetAvailableCapacity()
}

func TestGetCapacityDecreasesByCreatedSize(t *testing.T) {
	f := newFixture(t, tmpfsPool(t, 256<<20, false))
	// A first volume makes the accounted capacity, not the filesystem's free space,
	// the bound (a dir volume takes no space until written).
	_, err := f.srv.CreateVolume(context.Background(), createReq("pvc-first", 64<<20))
	wantCode(t, err, codes.OK)
	before := f.capacity(t)
	resp, err := f.srv.CreateVolume(context.Background(), createReq("pvc-second", 16<<20))
	wantCode(t, err, codes.OK)
	if after := f.capacity(t); after != before-16<<20 {
		t.Fatalf("capacity %d after creating 16 MiB, want %d", after, before-16<<20)
	}
	_, err = f.srv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: resp.GetVolume().GetVolumeId()})
	wantCode(t, err, codes.OK)
	if after := f.capacity(t); after != before {
		t.Fatalf("capacity %d after deleting the volume, want %d", after, before)
	}
}

func TestCreateVolumeAccountedCapacity(t *testing.T) {
	tests := []struct {
		name       string
		overcommit bool
		wantCode   codes.Code
	}{
		{"overcommit off", false, codes.ResourceExhausted},
		{"overcommit on", true, codes.OK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tmpfsPool(t, 256<<20, tc.overcommit))
			_, err := f.srv.CreateVolume(context.Background(), createReq("pvc-big", 200<<20))
			wantCode(t, err, codes.OK)
			_, err = f.srv.CreateVolume(context.Background(), createReq("pvc-more", 100<<20))
			wantCode(t, err, tc.wantCode)
			// Still larger than the pool itself: never servable.
			_, err = f.srv.CreateVolume(context.Background(), createReq("pvc-huge", 512<<20))
			wantCode(t, err, codes.OutOfRange)
		})
	}
}
