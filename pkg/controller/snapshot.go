package controller

import (
	"context"
	"errors"
	"sort"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/klog/v2"
)

func toCSI(s *storage.Snapshot) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:     s.ID,
		SourceVolumeId: s.SourceVolumeID,
		SizeBytes:      s.SizeBytes,
		CreationTime:   timestamppb.New(s.CreatedAt),
		ReadyToUse:     s.Ready,
	}
}

// CreateSnapshot copies a volume into a snapshot in the same pool: a reflink copy
// where the filesystem has them (ready at once), otherwise a background copy answered
// with ready_to_use=false; repeating the call reports its progress.
func (s *Server) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	if err := storage.ValidateName(req.GetName()); err != nil {
		return nil, csierr.Status(err)
	}
	if req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "source_volume_id is required")
	}
	for k := range req.GetParameters() {
		if len(k) < len(sidecarPrefix) || k[:len(sidecarPrefix)] != sidecarPrefix {
			return nil, status.Errorf(codes.InvalidArgument, "unknown snapshot parameter %q", k)
		}
	}
	p, hash, err := s.engine.Resolve(req.GetSourceVolumeId())
	if err != nil {
		return nil, csierr.Status(err)
	}
	id := storage.SnapshotID(p.Name(), req.GetName())
	// The snapshot's name and its source volume: no delete of the source meanwhile.
	unlock, err := s.lock(id, req.GetSourceVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	snap, err := p.CreateSnapshot(ctx, req.GetName(), hash)
	if err != nil {
		return nil, csierr.Status(err)
	}
	klog.FromContext(ctx).V(2).Info("Snapshot created", "snapshotID", snap.ID, "sourceVolumeID", snap.SourceVolumeID, "readyToUse", snap.Ready)
	return &csi.CreateSnapshotResponse{Snapshot: toCSI(snap)}, nil
}

// DeleteSnapshot removes a snapshot; an unknown one is success.
func (s *Server) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot_id is required")
	}
	if err := storage.ValidateName(id); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "snapshot_id: %v", err)
	}
	p, hash, err := s.engine.ResolveSnapshot(id)
	if errors.Is(err, storage.ErrPoolNotConfigured) {
		return nil, notServed("snapshot", id, err)
	}
	if err != nil {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	unlock, err := s.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := p.DeleteSnapshot(ctx, hash); err != nil {
		return nil, csierr.Status(err)
	}
	klog.FromContext(ctx).V(2).Info("Snapshot deleted", "snapshotID", id)
	return &csi.DeleteSnapshotResponse{}, nil
}

// ListSnapshots pages through snapshots in ID order, filtered by snapshot ID or
// source volume ID; the token is the snapshot ID to resume from.
func (s *Server) ListSnapshots(_ context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "max_entries %d is negative", req.GetMaxEntries())
	}
	var all []*storage.Snapshot
	switch {
	case req.GetSnapshotId() != "":
		if p, hash, err := s.engine.ResolveSnapshot(req.GetSnapshotId()); err == nil {
			if snap, err := p.Snapshot(hash); err == nil {
				all = append(all, snap)
			}
		}
	default:
		all = s.engine.AllSnapshots()
	}
	if src := req.GetSourceVolumeId(); src != "" {
		kept := all[:0]
		for _, snap := range all {
			if snap.SourceVolumeID == src {
				kept = append(kept, snap)
			}
		}
		all = kept
	}
	start := 0
	if tok := req.GetStartingToken(); tok != "" {
		if _, err := storage.ParseSnapshotID(tok); err != nil {
			return nil, status.Errorf(codes.Aborted, "starting_token %q is not valid: %v", tok, err)
		}
		start = sort.Search(len(all), func(i int) bool { return all[i].ID >= tok })
	}
	end := len(all)
	if n := int(req.GetMaxEntries()); n > 0 && start+n < end {
		end = start + n
	}
	resp := &csi.ListSnapshotsResponse{}
	for _, snap := range all[start:end] {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: toCSI(snap)})
	}
	if end < len(all) {
		resp.NextToken = all[end].ID
	}
	return resp, nil
}
