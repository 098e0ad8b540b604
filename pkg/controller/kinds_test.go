package controller_test

import (
	"context"
	"math"
	"path/filepath"
	"testing"

	"github.com/berth-csi/berth/pkg/controller"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

// kindPools are one pool of each kind under base. The quota pool sits on whatever
// filesystem base is on: it need not be served for parameters to be checked.
func kindPools(base string) []storage.PoolConfig {
	return []storage.PoolConfig{
		dirPool(base, "default"),
		{Name: "image", Path: filepath.Join(base, "image"), Kind: storage.KindImage},
		{Name: "quota", Path: filepath.Join(base, "quota"), Kind: storage.KindQuota},
	}
}

func fsCap(fsType string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func TestCreateVolumeKinds(t *testing.T) {
	rwoBlock := blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	tests := []struct {
		name       string
		pool       string
		params     map[string]string // besides the pool
		vc         *csi.VolumeCapability
		required   int64
		limit      int64
		wantCode   codes.Code
		wantSize   int64
		wantFSType string // recorded
	}{
		{"image with defaults", "image", nil, rwo, 1 << 20, 0, codes.OK, 1 << 20, storage.DefaultImageFSType},
		{"fsType xfs", "image", map[string]string{storage.ParamFSType: "xfs"}, rwo, 1 << 20, 0, codes.OK, 1 << 20, "xfs"},
		{"fs_type in the capability", "image", nil, fsCap("xfs"), 1 << 20, 0, codes.OK, 1 << 20, "xfs"},
		{"fs_type agreeing with fsType", "image", map[string]string{storage.ParamFSType: "xfs"}, fsCap("xfs"), 1 << 20, 0, codes.OK, 1 << 20, "xfs"},
		{"fs_type conflicting with fsType", "image", map[string]string{storage.ParamFSType: "ext4"}, fsCap("xfs"), 1 << 20, 0, codes.InvalidArgument, 0, ""},
		{"fsType btrfs", "image", map[string]string{storage.ParamFSType: "btrfs"}, rwo, 1 << 20, 0, codes.InvalidArgument, 0, ""},
		{"fs_type btrfs in the capability", "image", nil, fsCap("btrfs"), 1 << 20, 0, codes.InvalidArgument, 0, ""},
		{"block volume", "image", nil, rwoBlock, 1 << 20, 0, codes.OK, 1 << 20, ""},
		{"inodeLimit on an image pool", "image", map[string]string{storage.ParamInodeLimit: "100"}, rwo, 1 << 20, 0, codes.InvalidArgument, 0, ""},
		{"fsType on a quota pool", "quota", map[string]string{storage.ParamFSType: "xfs"}, rwo, 1 << 20, 0, codes.InvalidArgument, 0, ""},
		{"block on a quota pool", "quota", nil, rwoBlock, 1 << 20, 0, codes.InvalidArgument, 0, ""},
		{"fsType on a dir pool", "default", map[string]string{storage.ParamFSType: "xfs"}, rwo, 1 << 20, 0, codes.InvalidArgument, 0, ""},
		{"inodeLimit on a dir pool", "default", map[string]string{storage.ParamInodeLimit: "100"}, rwo, 1 << 20, 0, codes.InvalidArgument, 0, ""},
		{"image size rounded up to 4 KiB", "image", nil, rwo, 1<<20 + 1, 0, codes.OK, 1<<20 + 4096, "ext4"},
		{"rounded size within the limit", "image", nil, rwo, 1000, 4096, codes.OK, 4096, "ext4"},
		{"limit below the rounded size", "image", nil, rwo, 1000, 2000, codes.OutOfRange, 0, ""},
		{"limit alone, not a multiple of 4 KiB", "image", nil, rwo, 0, 5<<20 + 100, codes.OK, 5 << 20, "ext4"},
		{"limit alone, below 4 KiB", "image", nil, rwo, 0, 4095, codes.OutOfRange, 0, ""},
		{"dir pool sizes are exact", "default", nil, rwo, 1<<20 + 1, 0, codes.OK, 1<<20 + 1, ""},
		{"image size whose rounding would overflow", "image", nil, rwo, math.MaxInt64 - 1, 0, codes.OutOfRange, 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, kindPools(t.TempDir())...)
			params := map[string]string{controller.ParamPool: tc.pool}
			for k, v := range tc.params {
				params[k] = v
			}
			resp, err := f.srv.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
				Name:               "pvc-kind",
				CapacityRange:      &csi.CapacityRange{RequiredBytes: tc.required, LimitBytes: tc.limit},
				VolumeCapabilities: []*csi.VolumeCapability{tc.vc},
				Parameters:         params,
			})
			wantCode(t, err, tc.wantCode)
			if err != nil {
				if n := len(f.engine.AllVolumes()); n != 0 {
					t.Fatalf("a refused request left %d volumes", n)
				}
				return
			}
			if got := resp.GetVolume().GetCapacityBytes(); got != tc.wantSize {
				t.Fatalf("capacity_bytes %d, want %d", got, tc.wantSize)
			}
			_, r, err := f.engine.Volume(resp.GetVolume().GetVolumeId())
			if err != nil {
				t.Fatal(err)
			}
			if r.CapacityBytes != tc.wantSize || r.FSType != tc.wantFSType {
				t.Fatalf("recorded capacity %d fsType %q, want %d %q", r.CapacityBytes, r.FSType, tc.wantSize, tc.wantFSType)
			}
			// The same request again is the same volume: the rounding is idempotent.
			again, err := f.srv.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
				Name:               "pvc-kind",
				CapacityRange:      &csi.CapacityRange{RequiredBytes: tc.required, LimitBytes: tc.limit},
				VolumeCapabilities: []*csi.VolumeCapability{tc.vc},
				Parameters:         params,
			})
			wantCode(t, err, codes.OK)
			if again.GetVolume().GetVolumeId() != resp.GetVolume().GetVolumeId() {
				t.Fatalf("second call returned %s, want %s", again.GetVolume().GetVolumeId(), resp.GetVolume().GetVolumeId())
			}
		})
	}
}

func TestGetCapacityKinds(t *testing.T) {
	tests := []struct {
		name     string
		params   map[string]string
		vc       *csi.VolumeCapability
		wantCode codes.Code
		wantZero bool
	}{
		{"image pool", map[string]string{controller.ParamPool: "image"}, nil, codes.OK, false},
		{"block on an image pool", map[string]string{controller.ParamPool: "image"}, blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), codes.OK, false},
		{"fsType on an image pool", map[string]string{controller.ParamPool: "image", storage.ParamFSType: "xfs"}, nil, codes.OK, false},
		{"inodeLimit on an image pool", map[string]string{controller.ParamPool: "image", storage.ParamInodeLimit: "1"}, nil, codes.InvalidArgument, false},
		// t.TempDir() cannot enforce project quotas, so the quota pool is not served.
		{"unserved quota pool", map[string]string{controller.ParamPool: "quota"}, nil, codes.OK, true},
		{"fsType on a quota pool", map[string]string{controller.ParamPool: "quota", storage.ParamFSType: "xfs"}, nil, codes.InvalidArgument, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, kindPools(t.TempDir())...)
			req := &csi.GetCapacityRequest{Parameters: tc.params}
			if tc.vc != nil {
				req.VolumeCapabilities = []*csi.VolumeCapability{tc.vc}
			}
			resp, err := f.srv.GetCapacity(context.Background(), req)
			wantCode(t, err, tc.wantCode)
			if err != nil {
				return
			}
			if zero := resp.GetAvailableCapacity() == 0 && resp.GetMaximumVolumeSize().GetValue() == 0; zero != tc.wantZero {
				t.Fatalf("available %d maximum %v, want zero %t", resp.GetAvailableCapacity(), resp.GetMaximumVolumeSize(), tc.wantZero)
			}
		})
	}
}
