package node

import (
	"context"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/volhealth"
	"github.com/container-storage-interface/spec/lib/go/csi"
)

// NodeGetVolumeStats reports the volume's own bytes and inodes (not the whole
// filesystem's) as its pool kind measures them.
func (s *Server) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if err := required("volume_id", req.GetVolumeId()); err != nil {
		return nil, err
	}
	if err := required("volume_path", req.GetVolumePath()); err != nil {
		return nil, err
	}
	u, err := s.node.Stats(ctx, req.GetVolumeId(), req.GetVolumePath())
	if err != nil {
		return nil, csierr.Status(err)
	}
	resp := &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: u.TotalBytes, Used: u.UsedBytes, Available: u.AvailableBytes},
	}}
	if !u.BytesOnly {
		resp.Usage = append(resp.Usage, &csi.VolumeUsage{Unit: csi.VolumeUsage_INODES, Total: u.TotalInodes, Used: u.UsedInodes, Available: u.AvailableInodes})
	}
	return resp, nil
}

// NodeGetVolumeHealth reports the volume's condition on this node, and, when a publish
// path is given, whether the volume is really mounted there.
func (s *Server) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	if err := required("volume_id", req.GetVolumeId()); err != nil {
		return nil, err
	}
	problems, err := s.node.Health(ctx, req.GetVolumeId(), req.GetVolumePublishPath())
	if err != nil {
		return nil, csierr.Status(err)
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: volhealth.Of(req.GetVolumeId(), problems)}, nil
}
