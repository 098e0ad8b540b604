package controller

import (
	"context"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// ControllerModifyVolume sets a volume's mutable parameters (a VolumeAttributesClass's)
// and applies them. Keys it does not name are left as they are. Every key and value is
// checked before anything changes: one no kind of Berth knows, or one the volume's
// pool kind cannot honour, is InvalidArgument, naming the keys (and the kind).
// Served only where MODIFY_VOLUME is advertised: some pool has mutable parameters.
func (s *Server) ControllerModifyVolume(ctx context.Context, req *csi.ControllerModifyVolumeRequest) (*csi.ControllerModifyVolumeResponse, error) {
	if !s.engine.Modifiable() {
		return nil, status.Error(codes.Unimplemented, "no pool of this driver has mutable parameters: MODIFY_VOLUME is not advertised")
	}
	id := req.GetVolumeId()
	if err := checkID("volume_id", id); err != nil {
		return nil, err
	}
	params := ownParams(req.GetMutableParameters())
	unlock, err := s.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	r, err := s.engine.ModifyVolume(ctx, id, params)
	if err != nil {
		return nil, csierr.Status(err)
	}
	klog.FromContext(ctx).V(2).Info("Volume modified", "volumeID", r.ID, "mutableParameters", r.MutableParameters)
	return &csi.ControllerModifyVolumeResponse{}, nil
}
