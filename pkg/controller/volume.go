package controller

import (
	"context"
	"errors"

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
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	if err := storage.ValidateName(req.GetName()); err != nil {
		return nil, csierr.Status(err)
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume_capabilities is required")
	}
	p, params, err := s.poolFor(req.GetParameters())
	if err != nil {
		return nil, err
	}
	access, err := volcap.Check(req.GetVolumeCapabilities(), p)
	if err != nil {
		return nil, csierr.Status(err)
	}
	fsType, err := fsTypeFor(p, access, params, req.GetVolumeCapabilities())
	if err != nil {
		return nil, err
	}
	source, err := contentSource(req.GetVolumeContentSource())
	if err != nil {
		return nil, err
	}
	if source != nil && fsType != "" && !fsTypeAsked(params, req.GetVolumeCapabilities()) {
		// A copy holds its source's filesystem: that is the volume's, not the default.
		if t := s.sourceFSType(source); t != "" {
			fsType = t
		}
	}
	if !s.reachable(p, req.GetAccessibilityRequirements()) {
		return nil, status.Errorf(codes.ResourceExhausted,
			"accessibility_requirements cannot be met: this controller serves only %s=%s", TopologyKey, s.nodeID)
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
	// The name is the idempotency key across pools: the same name asked of another
	// pool is a request with other parameters.
	for _, q := range s.engine.Pools() {
		if q == p {
			continue
		}
		if _, _, err := s.engine.Volume(storage.VolumeID(q.Name(), req.GetName())); err == nil {
			return nil, status.Errorf(codes.AlreadyExists, "volume %q already exists in pool %s", req.GetName(), q.Name())
		}
	}
	r, err := p.Create(ctx, storage.CreateRequest{
		Name:          req.GetName(),
		RequiredBytes: req.GetCapacityRange().GetRequiredBytes(),
		LimitBytes:    req.GetCapacityRange().GetLimitBytes(),
		AccessType:    access,
		FSType:        fsType,
		Parameters:    params,
		Source:        source,
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
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	if err := storage.ValidateName(id); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "volume_id: %v", err)
	}
	if storage.IsAdopted(id) {
		klog.FromContext(ctx).V(2).Info("Adopted volume released, its data left untouched", "volumeID", id)
		return &csi.DeleteVolumeResponse{}, nil
	}
	p, hash, err := s.engine.Resolve(id)
	if errors.Is(err, storage.ErrPoolNotConfigured) {
		return nil, notServed("volume", id, err)
	}
	if err != nil {
		// A harmless ID that is not Berth's: no such volume exists, and deleting a
		// missing volume succeeds.
		return &csi.DeleteVolumeResponse{}, nil
	}
	unlock, err := s.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	pubID := id
	if r, err := p.Get(hash); err == nil && r.Ephemeral {
		// An inline volume is published under kubelet's volume ID.
		pubID = r.Name[len(storage.EphemeralName("")):]
	}
	if pubs := s.engine.Publications(pubID); len(pubs) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still published at %s", id, pubs[0].TargetPath)
	}
	if err := p.Delete(ctx, hash); err != nil {
		return nil, csierr.Status(err)
	}
	klog.FromContext(ctx).V(2).Info("Volume deleted", "volumeID", id)
	return &csi.DeleteVolumeResponse{}, nil
}

// ControllerGetVolume reports a volume and where it is published.
func (s *Server) ControllerGetVolume(_ context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
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
		if id == "" {
			return nil, status.Error(codes.InvalidArgument, "volume_content_source.snapshot.snapshot_id is required")
		}
		if err := storage.ValidateName(id); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "volume_content_source.snapshot.snapshot_id: %v", err)
		}
		return &storage.Source{Kind: storage.SourceSnapshot, ID: id}, nil
	case cs.GetVolume() != nil:
		id := cs.GetVolume().GetVolumeId()
		if id == "" {
			return nil, status.Error(codes.InvalidArgument, "volume_content_source.volume.volume_id is required")
		}
		if err := storage.ValidateName(id); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "volume_content_source.volume.volume_id: %v", err)
		}
		return &storage.Source{Kind: storage.SourceVolume, ID: id}, nil
	}
	return nil, status.Error(codes.InvalidArgument, "volume_content_source names neither a snapshot nor a volume")
}

// fsTypeAsked reports whether a request names a filesystem (parameter or capability).
func fsTypeAsked(params map[string]string, caps []*csi.VolumeCapability) bool {
	if params[storage.ParamFSType] != "" {
		return true
	}
	for _, c := range caps {
		if c.GetMount().GetFsType() != "" {
			return true
		}
	}
	return false
}

// sourceFSType is the filesystem a content source's image holds, "" when none or
// when the source is not found (the engine then reports why).
func (s *Server) sourceFSType(src *storage.Source) string {
	switch src.Kind {
	case storage.SourceSnapshot:
		if p, hash, err := s.engine.ResolveSnapshot(src.ID); err == nil {
			if snap, err := p.Snapshot(hash); err == nil {
				return snap.FSType
			}
		}
	case storage.SourceVolume:
		if _, r, err := s.engine.Volume(src.ID); err == nil {
			return r.FSType
		}
	}
	return ""
}
