package controller

import (
	"context"
	"maps"
	"slices"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/locks"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/klog/v2"
)

// GroupServer serves the CSI GroupController service: snapshots of several volumes
// of this node taken at one instant (storage/group.go). It shares the controller's
// try-locks, so a group and a snapshot or deletion of one of its volumes exclude
// each other.
type GroupServer struct {
	csi.UnimplementedGroupControllerServer
	engine *storage.Engine
	locks  *locks.Set
}

// NewGroup returns the group controller of engine's pools; l is the controller's.
func NewGroup(engine *storage.Engine, l *locks.Set) *GroupServer {
	return &GroupServer{engine: engine, locks: l}
}

// GroupControllerGetCapabilities advertises group snapshots only where one can be
// taken: a driver serving its node, with a pool whose filesystem has reflinks.
func (s *GroupServer) GroupControllerGetCapabilities(context.Context, *csi.GroupControllerGetCapabilitiesRequest) (*csi.GroupControllerGetCapabilitiesResponse, error) {
	resp := &csi.GroupControllerGetCapabilitiesResponse{}
	if s.engine.GroupSnapshotsServed() {
		resp.Capabilities = []*csi.GroupControllerServiceCapability{{
			Type: &csi.GroupControllerServiceCapability_Rpc{Rpc: &csi.GroupControllerServiceCapability_RPC{
				Type: csi.GroupControllerServiceCapability_RPC_CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT,
			}},
		}}
	}
	return resp, nil
}

// CreateVolumeGroupSnapshot snapshots source_volume_ids together, or says why they
// cannot be (FailedPrecondition: a shared pool, a pool without reflinks, a writer
// that cannot be paused). A repeated name with the same volumes, in any order,
// returns the same group; with other volumes, AlreadyExists.
func (s *GroupServer) CreateVolumeGroupSnapshot(ctx context.Context, req *csi.CreateVolumeGroupSnapshotRequest) (*csi.CreateVolumeGroupSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, required("name")
	}
	if err := storage.ValidateName(req.GetName()); err != nil {
		return nil, csierr.Status(err)
	}
	if len(req.GetSourceVolumeIds()) == 0 {
		return nil, required("source_volume_ids")
	}
	if own := slices.Sorted(maps.Keys(ownParams(req.GetParameters()))); len(own) > 0 {
		return nil, status.Errorf(codes.InvalidArgument, "unknown group snapshot parameter %q (group snapshots take none)", own[0])
	}
	// The name, the volumes (none deleted or snapshotted meanwhile) and the
	// members' snapshot IDs (no deletion of a leftover member meanwhile).
	keys := []string{"group:" + req.GetName()}
	for _, id := range req.GetSourceVolumeIds() {
		if err := checkID("source_volume_ids", id); err != nil {
			return nil, err
		}
		keys = append(keys, id)
		if member, err := storage.MemberSnapshotID(req.GetName(), id); err == nil {
			keys = append(keys, member)
		}
	}
	unlock, err := tryLock(s.locks, keys[0], slices.Compact(slices.Sorted(slices.Values(keys[1:])))...)
	if err != nil {
		return nil, err
	}
	defer unlock()
	g, err := s.engine.CreateGroupSnapshot(ctx, req.GetName(), req.GetSourceVolumeIds())
	if err != nil {
		return nil, csierr.Status(err)
	}
	klog.FromContext(ctx).V(2).Info("Group snapshot created", "groupSnapshotID", g.ID, "snapshots", len(g.Snapshots))
	return &csi.CreateVolumeGroupSnapshotResponse{GroupSnapshot: groupToCSI(g)}, nil
}

// DeleteVolumeGroupSnapshot deletes a group snapshot and its snapshots; an unknown
// one is success. snapshot_ids, when given, must be the group's (InvalidArgument).
func (s *GroupServer) DeleteVolumeGroupSnapshot(ctx context.Context, req *csi.DeleteVolumeGroupSnapshotRequest) (*csi.DeleteVolumeGroupSnapshotResponse, error) {
	id := req.GetGroupSnapshotId()
	if err := checkID("group_snapshot_id", id); err != nil {
		return nil, err
	}
	unlock, err := tryLock(s.locks, id, req.GetSnapshotIds()...)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := s.engine.DeleteGroupSnapshot(ctx, id, req.GetSnapshotIds()); err != nil {
		return nil, csierr.Status(err)
	}
	klog.FromContext(ctx).V(2).Info("Group snapshot deleted", "groupSnapshotID", id)
	return &csi.DeleteVolumeGroupSnapshotResponse{}, nil
}

// GetVolumeGroupSnapshot reports a group snapshot and its snapshots: NotFound when
// there is none, InvalidArgument when snapshot_ids are not its snapshots.
func (s *GroupServer) GetVolumeGroupSnapshot(_ context.Context, req *csi.GetVolumeGroupSnapshotRequest) (*csi.GetVolumeGroupSnapshotResponse, error) {
	if err := checkID("group_snapshot_id", req.GetGroupSnapshotId()); err != nil {
		return nil, err
	}
	g, err := s.engine.GroupSnapshot(req.GetGroupSnapshotId(), req.GetSnapshotIds())
	if err != nil {
		return nil, csierr.Status(err)
	}
	return &csi.GetVolumeGroupSnapshotResponse{GroupSnapshot: groupToCSI(g)}, nil
}

func groupToCSI(g *storage.GroupSnapshot) *csi.VolumeGroupSnapshot {
	out := &csi.VolumeGroupSnapshot{GroupSnapshotId: g.ID, CreationTime: timestamppb.New(g.CreatedAt), ReadyToUse: true}
	for _, snap := range g.Snapshots {
		out.Snapshots = append(out.Snapshots, toCSI(snap))
		out.ReadyToUse = out.ReadyToUse && snap.Ready
	}
	return out
}
