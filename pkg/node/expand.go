package node

import (
	"context"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"
)

// NodeExpandVolume grows a volume online, on the node that holds it: it raises the
// quota limit, or grows the image file, refreshes the loop device and grows the
// mounted filesystem. Berth expands on the node only (no controller EXPAND_VOLUME):
// see docs/design.md, "Expansion". Only the volume is locked: expansions of
// different volumes run side by side.
func (s *Server) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if err := required("volume_path", req.GetVolumePath()); err != nil {
		return nil, err
	}
	unlock, err := s.lock(id, "")
	if err != nil {
		return nil, err
	}
	defer unlock()
	grown, err := s.node.Expand(ctx, storage.ExpandRequest{
		VolumeID: id, VolumePath: req.GetVolumePath(), StagingPath: req.GetStagingTargetPath(),
		RequiredBytes: req.GetCapacityRange().GetRequiredBytes(), LimitBytes: req.GetCapacityRange().GetLimitBytes(),
	})
	if err != nil {
		return nil, csierr.Status(err)
	}
	klog.FromContext(ctx).V(2).Info("Volume expanded", "volumeID", id, "sizeBytes", grown.CapacityBytes)
	return &csi.NodeExpandVolumeResponse{CapacityBytes: grown.CapacityBytes}, nil
}
