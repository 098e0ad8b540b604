package node

import (
	"context"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"
)

// NodePublishVolume bind-mounts the volume at the target path, always nosuid and
// nodev, read-only when asked; an ephemeral inline volume is created first.
func (s *Server) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if err := required("target_path", target); err != nil {
		return nil, err
	}
	c, err := capability(req.GetVolumeCapability())
	if err != nil {
		return nil, err
	}
	unlock, err := s.lock(id, target)
	if err != nil {
		return nil, err
	}
	defer unlock()
	err = s.node.Publish(ctx, storage.PublishRequest{
		VolumeID: id, TargetPath: target, StagingPath: req.GetStagingTargetPath(),
		Capability: c, ReadOnly: req.GetReadonly(), VolumeContext: req.GetVolumeContext(),
	})
	if err != nil {
		return nil, csierr.Status(err)
	}
	klog.FromContext(ctx).V(2).Info("Volume published", "volumeID", id, "targetPath", target)
	return &csi.NodePublishVolumeResponse{}, nil
}

// NodeUnpublishVolume unmounts the target and removes it if it is left empty. A missing
// target, an unmounted one or a stale mount is success. An ephemeral volume is deleted
// with its last publication.
func (s *Server) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if err := required("target_path", target); err != nil {
		return nil, err
	}
	unlock, err := s.lock(id, target)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := s.node.Unpublish(ctx, id, target); err != nil {
		return nil, csierr.Status(err)
	}
	klog.FromContext(ctx).V(2).Info("Volume unpublished", "volumeID", id, "targetPath", target)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}
