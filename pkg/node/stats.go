package node

import (
	"context"
	"errors"
	"github.com/berth-csi/berth/pkg/storage/loop"
	"golang.org/x/sys/unix"
	"os"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/health"
	"github.com/berth-csi/berth/pkg/mounter"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// NodeGetVolumeStats reports the volume's own bytes and inodes (not the whole
// filesystem's) as its pool kind measures them.
func (s *Server) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	if req.GetVolumePath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_path is required")
	}
	if storage.IsAdopted(req.GetVolumeId()) {
		return fsStats(req.GetVolumePath())
	}
	p, r, err := s.resolve(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if _, err := os.Lstat(req.GetVolumePath()); errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.NotFound, "volume_path %s does not exist", req.GetVolumePath())
	}
	if p.Kind() == storage.KindImage {
		return imageStats(r, req.GetVolumePath())
	}
	u, err := p.Usage(ctx, r.Hash())
	if isStale(err) {
		// CSI 1.13 has no volume condition in this answer: NodeGetVolumeHealth reports it.
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is inaccessible: its filesystem no longer answers (%v); NodeStageVolume remounts it", r.ID, err)
	}
	if err != nil {
		return nil, csierr.Status(err)
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: u.TotalBytes, Used: u.UsedBytes, Available: u.AvailableBytes},
		{Unit: csi.VolumeUsage_INODES, Total: u.TotalInodes, Used: u.UsedInodes, Available: u.AvailableInodes},
	}}, nil
}

// NodeGetVolumeHealth reports the volume's condition on this node, and, when a publish
// path is given, whether the volume is really mounted there.
func (s *Server) NodeGetVolumeHealth(_ context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	if storage.IsAdopted(req.GetVolumeId()) {
		return &csi.NodeGetVolumeHealthResponse{VolumeHealth: health.Of(req.GetVolumeId(), adoptedProblems(req.GetVolumePublishPath()))}, nil
	}
	p, r, err := s.resolve(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	problems := p.Condition(r.Hash())
	if p.Kind() == storage.KindImage && r.AccessType == storage.AccessMount && req.GetVolumePublishPath() != "" {
		var st unix.Statfs_t
		if unix.Statfs(req.GetVolumePublishPath(), &st) == nil && full(&st) {
			problems = append(problems, storage.Problem{Kind: storage.Degraded, Reason: "CapacityExhausted",
				Message: "the filesystem of volume " + r.ID + " is full: writes fail, or soon will"})
		}
	}
	if path := req.GetVolumePublishPath(); path != "" {
		mounted, err := mounter.IsMountPoint(path)
		switch {
		case errors.Is(err, mounter.ErrStale):
			problems = append(problems, storage.Problem{Kind: storage.Inaccessible, Reason: "StaleMount",
				Message: "the mount at " + path + " no longer answers: " + err.Error()})
		case err == nil && !mounted:
			problems = append(problems, storage.Problem{Kind: storage.Inaccessible, Reason: "NotMounted",
				Message: "the volume is not mounted at " + path})
		}
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: health.Of(req.GetVolumeId(), problems)}, nil
}

// full reports a filesystem with (next to) no room left. Filesystems keep back blocks
// that statfs still counts as available (XFS's set-aside, ext4's margins for
// metadata), so writes fail while f_bavail is still a little above 0.
func full(st *unix.Statfs_t) bool {
	slack := min(int64(st.Blocks)*st.Bsize/100, 1<<20)
	return int64(st.Bavail)*st.Bsize <= slack || st.Ffree == 0
}

// imageStats reads an image volume's figures where it is published: the mounted
// filesystem's for a filesystem volume, the device's size for a block volume.
func imageStats(r *storage.Record, volumePath string) (*csi.NodeGetVolumeStatsResponse, error) {
	if r.AccessType == storage.AccessBlock {
		size, err := loop.Size(volumePath)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "size of %s: %v", volumePath, err)
		}
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}}}, nil
	}
	return fsStats(volumePath)
}
