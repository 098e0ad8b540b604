package controller

import (
	"context"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/volcap"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// CreateVolume provisions a volume in the pool the parameters name, on this node.
func (s *Server) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, required("name")
	}
	if err := storage.ValidateName(req.GetName()); err != nil {
		return nil, csierr.Status(err)
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, required("volume_capabilities")
	}
	p, params, err := s.poolFor(req.GetParameters())
	if err != nil {
		return nil, err
	}
	caps, err := volcap.ParseAll(req.GetVolumeCapabilities())
	if err != nil {
		return nil, csierr.Status(err)
	}
	source, err := contentSource(req.GetVolumeContentSource())
	if err != nil {
		return nil, err
	}
	var requisite []map[string]string
	for _, t := range req.GetAccessibilityRequirements().GetRequisite() {
		requisite = append(requisite, t.GetSegments())
	}
	id := storage.VolumeID(p.Name(), req.GetName())
	// Lock the name too: the same name may be asked of two pools at once. And the
	// content source: it may not be deleted while it is being copied (DeleteVolume
	// and DeleteSnapshot take its ID's lock, and answer Aborted meanwhile).
	keys := []string{"name:" + req.GetName()}
	if source != nil {
		keys = append(keys, source.ID)
	}
	unlock, err := s.lock(id, keys...)
	if err != nil {
		return nil, err
	}
	defer unlock()
	r, err := s.engine.Provision(ctx, p, storage.ProvisionRequest{
		Name:          req.GetName(),
		RequiredBytes: req.GetCapacityRange().GetRequiredBytes(),
		LimitBytes:    req.GetCapacityRange().GetLimitBytes(),
		Capabilities:  caps,
		Parameters:    params,
		// Sidecar-added keys (--extra-modify-metadata) are not Berth's.
		MutableParameters: ownParams(req.GetMutableParameters()),
		Source:            source,
		Node:              s.nodeID,
		Requisite:         requisite,
		Claim:             claimOf(req.GetParameters()),
	})
	if err != nil {
		return nil, csierr.Status(err)
	}
	klog.FromContext(ctx).V(2).Info("Volume created", "volumeID", r.ID, "name", r.Name, "pool", r.Pool, "sizeBytes", r.CapacityBytes)
	return &csi.CreateVolumeResponse{Volume: s.volume(r)}, nil
}

// DeleteVolume removes a volume; an unknown or already deleted one is success.
func (s *Server) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := checkID("volume_id", id); err != nil {
		return nil, err
	}
	unlock, err := s.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := s.engine.DeleteVolume(ctx, id); err != nil {
		return nil, csierr.Status(err)
	}
	klog.FromContext(ctx).V(2).Info("Volume deleted", "volumeID", id)
	return &csi.DeleteVolumeResponse{}, nil
}

// ControllerGetVolume reports a volume and where it is published.
func (s *Server) ControllerGetVolume(_ context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, required("volume_id")
	}
	_, r, err := s.engine.Volume(req.GetVolumeId())
	if err != nil {
		return nil, csierr.Status(err)
	}
	return &csi.ControllerGetVolumeResponse{
		Volume: s.volume(r),
		Status: &csi.ControllerGetVolumeResponse_VolumeStatus{PublishedNodeIds: s.publishedOn(r.ID)},
	}, nil
}

// contentSource reads a CreateVolume content source: a snapshot (restore) or a volume
// (clone), both in the pool being provisioned from.
func contentSource(cs *csi.VolumeContentSource) (*storage.Source, error) {
	switch {
	case cs == nil:
		return nil, nil
	case cs.GetSnapshot() != nil:
		id := cs.GetSnapshot().GetSnapshotId()
		if err := checkID("volume_content_source.snapshot.snapshot_id", id); err != nil {
			return nil, err
		}
		return &storage.Source{Kind: storage.SourceSnapshot, ID: id}, nil
	case cs.GetVolume() != nil:
		id := cs.GetVolume().GetVolumeId()
		if err := checkID("volume_content_source.volume.volume_id", id); err != nil {
			return nil, err
		}
		return &storage.Source{Kind: storage.SourceVolume, ID: id}, nil
	}
	return nil, status.Error(codes.InvalidArgument, "volume_content_source names neither a snapshot nor a volume")
}
