package controller

import (
	"context"
	"maps"
	"slices"

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
		SnapshotId:      s.ID,
		SourceVolumeId:  s.SourceVolumeID,
		SizeBytes:       s.SizeBytes,
		CreationTime:    timestamppb.New(s.CreatedAt),
		ReadyToUse:      s.Ready,
		GroupSnapshotId: s.Group,
	}
}

// CreateSnapshot copies a volume into a snapshot in the same pool: a reflink copy
// where the filesystem has them (ready at once), otherwise a background copy answered
// with ready_to_use=false; repeating the call reports its progress.
func (s *Server) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, required("name")
	}
	if err := storage.ValidateName(req.GetName()); err != nil {
		return nil, csierr.Status(err)
	}
	if req.GetSourceVolumeId() == "" {
		return nil, required("source_volume_id")
	}
	params := ownParams(req.GetParameters())
	backupPool, backup := params[ParamBackupPool]
	delete(params, ParamBackupPool)
	if own := slices.Sorted(maps.Keys(params)); len(own) > 0 {
		return nil, status.Errorf(codes.InvalidArgument, "unknown snapshot parameter %q (snapshots take only %s)", own[0], ParamBackupPool)
	}
	p, hash, err := s.engine.Resolve(req.GetSourceVolumeId())
	if err != nil {
		return nil, csierr.Status(err)
	}
	if backup {
		return s.createBackup(ctx, req, backupPool, p, hash)
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

// ParamBackupPool, a VolumeSnapshotClass parameter, names the shared pool a
// snapshot is kept in as a backup (storage/backup.go).
const ParamBackupPool = "backupPool"

// createBackup is CreateSnapshot with backupPool: the snapshot is made in that
// shared pool, ready once its copy there is durable.
func (s *Server) createBackup(ctx context.Context, req *csi.CreateSnapshotRequest, pool string, src *storage.Pool, hash string) (*csi.CreateSnapshotResponse, error) {
	b, err := s.engine.Pool(pool)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "parameter %s: %v", ParamBackupPool, err)
	}
	id := storage.SnapshotID(b.Name(), req.GetName())
	unlock, err := s.lock(id, req.GetSourceVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	snap, err := b.CreateBackup(ctx, req.GetName(), src, hash)
	if err != nil {
		return nil, csierr.Status(err)
	}
	klog.FromContext(ctx).V(2).Info("Backup created", "snapshotID", snap.ID, "sourceVolumeID", snap.SourceVolumeID, "readyToUse", snap.Ready)
	return &csi.CreateSnapshotResponse{Snapshot: toCSI(snap)}, nil
}

// DeleteSnapshot removes a snapshot; an unknown one is success.
func (s *Server) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if err := checkID("snapshot_id", id); err != nil {
		return nil, err
	}
	unlock, err := s.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := s.engine.DeleteSnapshot(ctx, id); err != nil {
		return nil, csierr.Status(err)
	}
	klog.FromContext(ctx).V(2).Info("Snapshot deleted", "snapshotID", id)
	return &csi.DeleteSnapshotResponse{}, nil
}

// ListSnapshots pages through snapshots in ID order, filtered by snapshot ID or
// source volume ID; the token is the snapshot ID to resume from.
func (s *Server) ListSnapshots(_ context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	if err := checkMaxEntries(req.GetMaxEntries()); err != nil {
		return nil, err
	}
	rest, err := s.engine.SnapshotsFrom(req.GetStartingToken(), storage.SnapshotFilter{
		SnapshotID: req.GetSnapshotId(), SourceVolumeID: req.GetSourceVolumeId(),
	})
	if err != nil {
		return nil, csierr.Status(err)
	}
	snaps, next := page(rest, req.GetMaxEntries(), func(snap *storage.Snapshot) string { return snap.ID })
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, snap := range snaps {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: toCSI(snap)})
	}
	return resp, nil
}

// GetSnapshot reports one snapshot with the fields ListSnapshots gives it, also while
// it is being copied (ready_to_use false). An empty ID or one that is not even a
// valid name is InvalidArgument; an ID that names no snapshot here is NotFound.
func (s *Server) GetSnapshot(_ context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	if err := checkID("snapshot_id", req.GetSnapshotId()); err != nil {
		return nil, err
	}
	snap, err := s.engine.Snapshot(req.GetSnapshotId())
	if err != nil {
		return nil, csierr.Status(err)
	}
	return &csi.GetSnapshotResponse{Snapshot: toCSI(snap)}, nil
}
