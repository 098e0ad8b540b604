package controller_test

import (
	"context"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/berth-csi/berth/pkg/controller"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

func TestValidateVolumeCapabilities(t *testing.T) {
	const existing = "<existing>" // replaced by the ID of a volume created for the case
	caps := func(c ...*csi.VolumeCapability) []*csi.VolumeCapability { return c }
	tests := []struct {
		name          string
		id            string
		caps          []*csi.VolumeCapability
		params        map[string]string
		wantCode      codes.Code
		wantConfirmed bool
	}{
		{"single node writer", existing, caps(rwo), nil, codes.OK, true},
		{"every node-local mode", existing, caps(
			mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER),
			mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY),
			mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER),
			mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER),
		), nil, codes.OK, true},
		{"known parameters", existing, caps(rwo), map[string]string{
			controller.ParamPool: "default", "csi.storage.k8s.io/pvc/name": "data",
		}, codes.OK, true},
		{"MULTI_NODE_MULTI_WRITER", existing, caps(mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)), nil, codes.OK, false},
		{"MULTI_NODE_READER_ONLY", existing, caps(mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)), nil, codes.OK, false},
		{"MULTI_NODE_SINGLE_WRITER", existing, caps(mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER)), nil, codes.OK, false},
		{"one supported, one MULTI_NODE", existing, caps(rwo, mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)), nil, codes.OK, false},
		{"block", existing, caps(blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)), nil, codes.OK, false},
		{"unknown parameter", existing, caps(rwo), map[string]string{"foo": "bar"}, codes.OK, false},
		{"unknown volume", unknownID, caps(rwo), nil, codes.NotFound, false},
		{"missing volume id", "", caps(rwo), nil, codes.InvalidArgument, false},
		{"missing capabilities", existing, nil, nil, codes.InvalidArgument, false},
		{"missing capabilities of unknown volume", unknownID, nil, nil, codes.InvalidArgument, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			id := tc.id
			if id == existing {
				id = f.mustCreate(t, "pvc-validate").GetVolumeId()
			}
			resp, err := f.srv.ValidateVolumeCapabilities(context.Background(), &csi.ValidateVolumeCapabilitiesRequest{
				VolumeId: id, VolumeCapabilities: tc.caps, Parameters: tc.params,
				VolumeContext: map[string]string{"pool": "default"},
			})
			wantCode(t, err, tc.wantCode)
			if err != nil {
				return
			}
			if tc.wantConfirmed {
				c := resp.GetConfirmed()
				if c == nil {
					t.Fatalf("not confirmed: %q", resp.GetMessage())
				}
				if len(c.GetVolumeCapabilities()) != len(tc.caps) {
					t.Fatalf("confirmed %d capabilities, want %d", len(c.GetVolumeCapabilities()), len(tc.caps))
				}
				return
			}
			if resp.GetConfirmed() != nil {
				t.Fatalf("confirmed %v, want not confirmed", resp.GetConfirmed())
			}
			if resp.GetMessage() == "" {
				t.Fatal("not confirmed without a message")
			}
		})
	}
}

// kindParams are the StorageClass parameters each kind takes (README, "StorageClass").
var kindParams = map[string][]string{storage.KindDir: nil, storage.KindImage: {storage.ParamFSType}, storage.KindQuota: {storage.ParamInodeLimit}}

// FuzzParameters: StorageClass parameters (one key=value a line) name a pool this
// node serves ("pool", else the default) and hold no key but "pool", the sidecars'
// csi.storage.k8s.io/ keys and the parameters of that pool's kind, or GetCapacity
// and CreateVolume refuse them with InvalidArgument. A volume created with them
// records "pool" and its kind's parameters only, so the same request with other
// sidecar keys (another claim's name) finds the same volume.
func FuzzParameters(f *testing.F) {
	pools := []storage.PoolConfig{dirPool(f.TempDir(), "default"),
		{Name: "img", Path: filepath.Join(f.TempDir(), "img"), Kind: storage.KindImage},
		{Name: "q", Path: filepath.Join(f.TempDir(), "q"), Kind: storage.KindQuota}}
	fx := newFixture(f, pools...)
	kinds := map[string]string{}
	for _, p := range pools {
		kinds[p.Name] = p.Kind
	}
	for _, s := range []string{
		"", "pool=default", "pool=img\nfsType=xfs", "pool=q\ninodeLimit=1000", "fsType=xfs", "pool=default\ninodeLimit=1",
		"csi.storage.k8s.io/pvc/name=data\ncsi.storage.k8s.io/pvc/namespace=ns", "pool=nope", "pool=", "foo=bar",
		"csi.storage.k8s.io=x", "Pool=default", "pool=img\nfsType=zfs\ncsi.storage.k8s.io/fstype=ext4",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		params := map[string]string{}
		for line := range strings.SplitSeq(s, "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				params[k] = v
			}
		}
		pool, ok := params[controller.ParamPool]
		if !ok {
			pool = "default"
		}
		kind, valid := kinds[pool]
		for k := range params {
			valid = valid && (k == controller.ParamPool || strings.HasPrefix(k, "csi.storage.k8s.io/") || slices.Contains(kindParams[kind], k))
		}
		_, err := fx.srv.GetCapacity(context.Background(), &csi.GetCapacityRequest{Parameters: params})
		if !valid {
			wantCode(t, err, codes.InvalidArgument)
			_, err := fx.srv.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "fuzz", Parameters: params,
				VolumeCapabilities: []*csi.VolumeCapability{rwo}})
			wantCode(t, err, codes.InvalidArgument)
			return
		}
		wantCode(t, err, codes.OK)
		if kind != storage.KindDir {
			return // creating image and quota volumes needs tools and a kernel this test does not
		}
		req := &csi.CreateVolumeRequest{Name: "fuzz", Parameters: params, VolumeCapabilities: []*csi.VolumeCapability{rwo}}
		resp, err := fx.srv.CreateVolume(context.Background(), req)
		wantCode(t, err, codes.OK)
		id := resp.GetVolume().GetVolumeId()
		defer func() {
			_, err := fx.srv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id})
			wantCode(t, err, codes.OK)
		}()
		_, r, err := fx.engine.Volume(id)
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(r.Parameters, map[string]string{controller.ParamPool: pool}) {
			t.Fatalf("parameters %v: volume %s records %v", params, id, r.Parameters)
		}
		other := maps.Clone(params)
		maps.DeleteFunc(other, func(k, _ string) bool { return strings.HasPrefix(k, "csi.storage.k8s.io/") })
		other["csi.storage.k8s.io/pvc/name"] = "another-claim"
		req.Parameters = other
		again, err := fx.srv.CreateVolume(context.Background(), req)
		wantCode(t, err, codes.OK)
		if again.GetVolume().GetVolumeId() != id {
			t.Fatalf("parameters %v then %v: volumes %s and %s", params, other, id, again.GetVolume().GetVolumeId())
		}
	})
}
