package controller_test

import (
	"context"
	"maps"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

// TestModifyVolumeAdvertised: MODIFY_VOLUME is advertised only when some pool has
// mutable parameters (a quota pool, served or not; a dir pool on a block device, for
// I/O limits), and a driver without one (a dir pool on a tmpfs) refuses
// ControllerModifyVolume as unimplemented and mutable_parameters at create.
func TestModifyVolumeAdvertised(t *testing.T) {
	dirOnly := newFixture(t, dirPool(noDeviceDir(t), "default"))
	if dirOnly.hasCap(t, csi.ControllerServiceCapability_RPC_MODIFY_VOLUME) {
		t.Fatal("MODIFY_VOLUME advertised by a driver of a dir pool on a tmpfs only")
	}
	req := createReq("pvc-mutable", 1<<20)
	req.MutableParameters = map[string]string{storage.ParamInodeLimit: "100"}
	_, err := dirOnly.srv.CreateVolume(context.Background(), req)
	wantCode(t, err, codes.InvalidArgument)

	withQuota := newFixture(t, kindPools(t.TempDir())...)
	if !withQuota.hasCap(t, csi.ControllerServiceCapability_RPC_MODIFY_VOLUME) {
		t.Fatal("MODIFY_VOLUME not advertised by a driver with a quota pool")
	}
	onDevice := newFixture(t, dirPool(onDeviceDir(t), "default"))
	if !onDevice.hasCap(t, csi.ControllerServiceCapability_RPC_MODIFY_VOLUME) {
		t.Fatal("MODIFY_VOLUME not advertised by a driver with a dir pool on a block device")
	}
}

// TestModifyVolumeIOLimits: the per-pod I/O limits at ControllerModifyVolume and at
// CreateVolume: a bad value is InvalidArgument, so is a limit on a pool that lies on
// no block device; good ones, "0" too, are recorded. (This controller has no node
// side: that the limits reach the pods is storage's test, TestIOLimitsThrottlePods.)
func TestModifyVolumeIOLimits(t *testing.T) {
	f := newFixture(t, dirPool(onDeviceDir(t), "default"), dirPool(noDeviceDir(t), "shm"))
	vol := f.create(t, "pvc-io", "default", 1<<20, nil)
	tmpfsVol := f.create(t, "pvc-io-shm", "shm", 1<<20, nil)
	tests := []struct {
		name     string
		req      *csi.ControllerModifyVolumeRequest
		wantCode codes.Code
	}{
		{"byte rate not a quantity", &csi.ControllerModifyVolumeRequest{VolumeId: vol, MutableParameters: map[string]string{storage.ParamReadBytesPerSecond: "fast"}}, codes.InvalidArgument},
		{"negative byte rate", &csi.ControllerModifyVolumeRequest{VolumeId: vol, MutableParameters: map[string]string{storage.ParamWriteBytesPerSecond: "-1"}}, codes.InvalidArgument},
		{"IOPS with a suffix", &csi.ControllerModifyVolumeRequest{VolumeId: vol, MutableParameters: map[string]string{storage.ParamReadIOPS: "1k"}}, codes.InvalidArgument},
		{"one bad key of two", &csi.ControllerModifyVolumeRequest{VolumeId: vol, MutableParameters: map[string]string{storage.ParamReadIOPS: "10", storage.ParamWriteIOPS: "x"}}, codes.InvalidArgument},
		{"limit on a pool without block device", &csi.ControllerModifyVolumeRequest{VolumeId: tmpfsVol, MutableParameters: map[string]string{storage.ParamReadBytesPerSecond: "10Mi"}}, codes.InvalidArgument},
		{"limits", &csi.ControllerModifyVolumeRequest{VolumeId: vol, MutableParameters: map[string]string{storage.ParamReadBytesPerSecond: "10Mi", storage.ParamWriteIOPS: "100"}}, codes.OK},
		{"lifted", &csi.ControllerModifyVolumeRequest{VolumeId: vol, MutableParameters: map[string]string{storage.ParamReadBytesPerSecond: "0"}}, codes.OK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.srv.ControllerModifyVolume(context.Background(), tc.req)
			wantCode(t, err, tc.wantCode)
		})
	}
	_, r, err := f.engine.Volume(vol)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{storage.ParamReadBytesPerSecond: "0", storage.ParamWriteIOPS: "100"}
	if !maps.Equal(r.MutableParameters, want) {
		t.Fatalf("recorded mutable parameters %v, want %v", r.MutableParameters, want)
	}

	req := createReq("pvc-io-bad", 1<<20)
	req.MutableParameters = map[string]string{storage.ParamReadBytesPerSecond: "10 Mi"}
	_, err = f.srv.CreateVolume(context.Background(), req)
	wantCode(t, err, codes.InvalidArgument)
	req = createReq("pvc-io-good", 1<<20)
	req.MutableParameters = map[string]string{storage.ParamReadBytesPerSecond: "10Mi"}
	_, err = f.srv.CreateVolume(context.Background(), req)
	wantCode(t, err, codes.OK)
}

// TestModifyVolumeRequests: every refusal of ControllerModifyVolume, on a driver with a
// dir, an image and a quota pool (the last not served on a filesystem without project
// quotas). Nothing is applied when any key is refused.
func TestModifyVolumeRequests(t *testing.T) {
	f := newFixture(t, kindPools(t.TempDir())...)
	dirVol := f.create(t, "pvc-dir", "default", 1<<20, nil)
	inodes := map[string]string{storage.ParamInodeLimit: "100"}
	tests := []struct {
		name     string
		req      *csi.ControllerModifyVolumeRequest
		setup    func(t *testing.T) func()
		wantCode codes.Code
	}{
		{"no volume ID", &csi.ControllerModifyVolumeRequest{MutableParameters: inodes}, nil, codes.InvalidArgument},
		{"volume ID that is no valid name", &csi.ControllerModifyVolumeRequest{VolumeId: "../" + dirVol, MutableParameters: inodes}, nil, codes.InvalidArgument},
		{"unknown volume", &csi.ControllerModifyVolumeRequest{VolumeId: unknownID}, nil, codes.NotFound},
		{"ID not in Berth's format", &csi.ControllerModifyVolumeRequest{VolumeId: "non-existing-volume-id"}, nil, codes.NotFound},
		{"pool not configured here", &csi.ControllerModifyVolumeRequest{VolumeId: "b1-elsewhere-0123456789abcdef0123456789abcdef"}, nil, codes.NotFound},
		{"unknown key", &csi.ControllerModifyVolumeRequest{VolumeId: dirVol, MutableParameters: map[string]string{"XXX_FakeKey": "XXX_FakeValue"}}, nil, codes.InvalidArgument},
		{"unknown key of an unknown volume", &csi.ControllerModifyVolumeRequest{VolumeId: unknownID, MutableParameters: map[string]string{"iops": "100"}}, nil, codes.InvalidArgument},
		{"inodeLimit on a dir pool", &csi.ControllerModifyVolumeRequest{VolumeId: dirVol, MutableParameters: inodes}, nil, codes.InvalidArgument},
		{"a StorageClass parameter that is not mutable", &csi.ControllerModifyVolumeRequest{VolumeId: dirVol, MutableParameters: map[string]string{"pool": "image"}}, nil, codes.InvalidArgument},
		{"volume of a quota pool not served", &csi.ControllerModifyVolumeRequest{VolumeId: "b1-quota-0123456789abcdef0123456789abcdef", MutableParameters: inodes}, nil, codes.Unavailable},
		{"nothing to change", &csi.ControllerModifyVolumeRequest{VolumeId: dirVol}, nil, codes.OK},
		{"sidecar metadata only", &csi.ControllerModifyVolumeRequest{VolumeId: dirVol, MutableParameters: map[string]string{"csi.storage.k8s.io/pvc/name": "data"}}, nil, codes.OK},
		{"volume busy", &csi.ControllerModifyVolumeRequest{VolumeId: dirVol}, func(t *testing.T) func() {
			if !f.locks.TryAcquire(dirVol) {
				t.Fatal("lock taken")
			}
			return func() { f.locks.Release(dirVol) }
		}, codes.Aborted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				defer tc.setup(t)()
			}
			_, err := f.srv.ControllerModifyVolume(context.Background(), tc.req)
			wantCode(t, err, tc.wantCode)
		})
	}
	_, r, err := f.engine.Volume(dirVol)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.MutableParameters) != 0 {
		t.Fatalf("dir volume recorded mutable parameters %v", r.MutableParameters)
	}
}

// TestCreateVolumeMutableParameters: CreateVolume's mutable_parameters are checked as
// ControllerModifyVolume's are, against the pool the volume is created in.
func TestCreateVolumeMutableParameters(t *testing.T) {
	f := newFixture(t, kindPools(t.TempDir())...)
	tests := []struct {
		name     string
		pool     string
		mutable  map[string]string
		wantCode codes.Code
	}{
		{"none", "default", nil, codes.OK},
		{"sidecar metadata only", "default", map[string]string{"csi.storage.k8s.io/pvc/name": "data"}, codes.OK},
		{"unknown key", "default", map[string]string{"XXX_FakeKey": "XXX_FakeValue"}, codes.InvalidArgument},
		{"inodeLimit on a dir pool", "default", map[string]string{storage.ParamInodeLimit: "100"}, codes.InvalidArgument},
		{"inodeLimit on an image pool", "image", map[string]string{storage.ParamInodeLimit: "100"}, codes.InvalidArgument},
		{"inodeLimit zero on a quota pool", "quota", map[string]string{storage.ParamInodeLimit: "0"}, codes.InvalidArgument},
		{"inodeLimit not a number on a quota pool", "quota", map[string]string{storage.ParamInodeLimit: "many"}, codes.InvalidArgument},
		// Valid, but the pool is not served on this filesystem.
		{"inodeLimit on a quota pool not served", "quota", map[string]string{storage.ParamInodeLimit: "100"}, codes.Unavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := inPool("pvc-"+tc.pool, tc.pool, 1<<20, nil)
			req.MutableParameters = tc.mutable
			_, err := f.srv.CreateVolume(context.Background(), req)
			wantCode(t, err, tc.wantCode)
		})
	}
}
