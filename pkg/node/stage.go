package node

import (
	"context"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"
)

// NodeStageVolume prepares the volume at the staging path as its pool kind needs:
// an image is attached to a loop device and, for a filesystem volume, formatted on
// first use and mounted; a shared volume's directory is bound; directory volumes
// need nothing, and the call only validates. A volume moved to this node
// (AttrResyncFrom in its volume context) is first brought up to date with the
// volume it was cloned from, in the background: until that ends the answer is
// Aborted with its progress.
func (s *Server) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if err := required("staging_target_path", staging); err != nil {
		return nil, err
	}
	c, err := capability(req.GetVolumeCapability())
	if err != nil {
		return nil, err
	}
	unlock, err := s.lock(id, staging)
	if err != nil {
		return nil, err
	}
	defer unlock()
	sr := storage.StageRequest{VolumeID: id, StagingPath: staging, Capability: c,
		ResyncFrom: req.GetVolumeContext()[AttrResyncFrom]}
	if err := s.node.Stage(ctx, sr); err != nil {
		return nil, csierr.Status(err)
	}
	klog.FromContext(ctx).V(2).Info("Volume staged", "volumeID", id, "stagingPath", staging)
	return &csi.NodeStageVolumeResponse{}, nil
}

// NodeUnstageVolume unmounts the staging path and undoes the kind's staging (detaches
// an image's loop device). A volume that is not staged, or no longer exists, is success.
func (s *Server) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if err := required("staging_target_path", staging); err != nil {
		return nil, err
	}
	unlock, err := s.lock(id, staging)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := s.node.Unstage(ctx, id, staging); err != nil {
		return nil, csierr.Status(err)
	}
	klog.FromContext(ctx).V(2).Info("Volume unstaged", "volumeID", id, "stagingPath", staging)
	return &csi.NodeUnstageVolumeResponse{}, nil
}
