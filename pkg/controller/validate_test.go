package controller_test

import (
	"context"
	"testing"

	"github.com/berth-csi/berth/pkg/controller"
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
