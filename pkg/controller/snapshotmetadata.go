package controller

import (
	"context"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// MetadataServer serves the CSI SnapshotMetadata service (changed-block tracking)
// for snapshots of image volumes: the allocated ranges of one snapshot and the
// ranges changed between two snapshots of one volume (storage/blockmeta.go). Ranges
// are VARIABLE_LENGTH: whole 4 KiB blocks at aligned offsets, adjacent ones merged.
type MetadataServer struct {
	csi.UnimplementedSnapshotMetadataServer
	engine  *storage.Engine
	forward MetadataForwarder
}

// NewMetadata returns the SnapshotMetadata service of engine's pools.
func NewMetadata(engine *storage.Engine) *MetadataServer { return &MetadataServer{engine: engine} }

// Forwarding sends the calls for snapshots that no pool of this plugin holds to the
// plugin of the node that holds them (f), and relays its answers; without it such
// a call is NotFound. The peers' own service must not forward (one hop at most).
func (s *MetadataServer) Forwarding(f MetadataForwarder) *MetadataServer {
	s.forward = f
	return s
}

// defaultMaxResults is how many ranges one message carries when the request leaves
// max_results 0 (about 14 KiB of message).
const defaultMaxResults = 1024

// GetMetadataAllocated streams the ranges of a snapshot's image that hold data.
func (s *MetadataServer) GetMetadataAllocated(req *csi.GetMetadataAllocatedRequest, stream csi.SnapshotMetadata_GetMetadataAllocatedServer) error {
	if err := checkID("snapshot_id", req.GetSnapshotId()); err != nil {
		return err
	}
	n, err := maxResults(req.GetMaxResults())
	if err != nil {
		return err
	}
	ctx := stream.Context()
	m, err := s.engine.AllocatedBlocks(ctx, req.GetSnapshotId(), req.GetStartingOffset())
	if s.forwards(err) {
		return forward(ctx, s.forward, req.GetSnapshotId(), err, func(c csi.SnapshotMetadataClient) (func() (*csi.GetMetadataAllocatedResponse, error), error) {
			r, err := c.GetMetadataAllocated(ctx, req)
			if err != nil {
				return nil, err
			}
			return r.Recv, nil
		}, stream.Send)
	}
	if err != nil {
		return csierr.Status(err)
	}
	defer m.Close()
	return sendRanges(ctx, m, n, func(b []*csi.BlockMetadata) error {
		return stream.Send(&csi.GetMetadataAllocatedResponse{
			BlockMetadataType: csi.BlockMetadataType_VARIABLE_LENGTH, VolumeCapacityBytes: m.SizeBytes, BlockMetadata: b,
		})
	})
}

// GetMetadataDelta streams the ranges where the target snapshot differs from the
// base snapshot of the same volume.
func (s *MetadataServer) GetMetadataDelta(req *csi.GetMetadataDeltaRequest, stream csi.SnapshotMetadata_GetMetadataDeltaServer) error {
	if err := checkID("base_snapshot_id", req.GetBaseSnapshotId()); err != nil {
		return err
	}
	if err := checkID("target_snapshot_id", req.GetTargetSnapshotId()); err != nil {
		return err
	}
	n, err := maxResults(req.GetMaxResults())
	if err != nil {
		return err
	}
	ctx := stream.Context()
	m, err := s.engine.ChangedBlocks(ctx, req.GetBaseSnapshotId(), req.GetTargetSnapshotId(), req.GetStartingOffset())
	if s.forwards(err) {
		// Both snapshots are of one volume, so on one node: the target's.
		return forward(ctx, s.forward, req.GetTargetSnapshotId(), err, func(c csi.SnapshotMetadataClient) (func() (*csi.GetMetadataDeltaResponse, error), error) {
			r, err := c.GetMetadataDelta(ctx, req)
			if err != nil {
				return nil, err
			}
			return r.Recv, nil
		}, stream.Send)
	}
	if err != nil {
		return csierr.Status(err)
	}
	defer m.Close()
	return sendRanges(ctx, m, n, func(b []*csi.BlockMetadata) error {
		return stream.Send(&csi.GetMetadataDeltaResponse{
			BlockMetadataType: csi.BlockMetadataType_VARIABLE_LENGTH, VolumeCapacityBytes: m.SizeBytes, BlockMetadata: b,
		})
	})
}

func maxResults(n int32) (int, error) {
	switch {
	case n < 0:
		return 0, status.Errorf(codes.InvalidArgument, "max_results %d is negative", n)
	case n == 0:
		return defaultMaxResults, nil
	}
	return int(n), nil
}

// sendRanges walks m and sends its ranges n to a message. A listing with no range
// still sends one message, which tells the volume's capacity. A failed send (the
// client went away) ends the walk with the send's error.
func sendRanges(ctx context.Context, m *storage.BlockMetadata, n int, send func([]*csi.BlockMetadata) error) error {
	batch := make([]*csi.BlockMetadata, 0, min(n, defaultMaxResults))
	sent := false
	flush := func() error {
		sent = true
		err := send(batch)
		batch = make([]*csi.BlockMetadata, 0, cap(batch))
		return err
	}
	err := m.Walk(ctx, func(r storage.BlockRange) error {
		batch = append(batch, &csi.BlockMetadata{ByteOffset: r.Offset, SizeBytes: r.Length})
		if len(batch) == n {
			return flush()
		}
		return nil
	})
	if err != nil {
		return csierr.Status(err)
	}
	if len(batch) > 0 || !sent {
		return csierr.Status(flush())
	}
	return nil
}
