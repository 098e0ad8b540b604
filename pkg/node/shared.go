package node

import (
	"context"
	"errors"
	"os"

	"github.com/berth-csi/berth/pkg/mounter"
	"github.com/berth-csi/berth/pkg/storage"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// A shared volume is staged by binding its data directory (on the pool's one mount of
// the distributed filesystem) at the staging path; publish binds the staging path to
// each target. When the filesystem's client dies (a killed FUSE process), every bind
// of it answers ENOTCONN: the next stage remounts the pool and binds the staging path
// again, and the next publish of a target replaces its dead mount.

// stageShared makes sure the pool answers (remounting it when its mount died) and
// that the staging path shows the volume's data directory. Idempotent.
func (s *Server) stageShared(ctx context.Context, p *storage.Pool, r *storage.Record, staging, rel string) error {
	if err := p.EnsureMounted(ctx); err != nil {
		return status.Errorf(codes.Internal, "stage %s: %v", r.ID, err)
	}
	if err := s.prepareTarget(staging, rel, false); err != nil {
		return err
	}
	data := p.DataPath(r.Hash())
	mounted, err := mounter.IsMountPoint(staging)
	switch {
	case errors.Is(err, mounter.ErrStale):
		klog.FromContext(ctx).Info("Replacing dead staging mount", "volumeID", r.ID, "stagingPath", staging)
		if err := unmountAll(staging); err != nil {
			return status.Errorf(codes.Internal, "unmount dead staging mount %s: %v", staging, err)
		}
	case err != nil:
		return status.Errorf(codes.Internal, "check staging path %s: %v", staging, err)
	case mounted:
		m, err := mounter.At(staging)
		if err != nil {
			return status.Errorf(codes.Internal, "read mount at %s: %v", staging, err)
		}
		if same, err := mounter.SameSource(m, data); err == nil && same {
			return nil
		}
		return status.Errorf(codes.FailedPrecondition, "staging_target_path %s is already a mount point of something else", staging)
	}
	if err := mounter.Bind(data, staging, mounter.Options{}); err != nil {
		return status.Errorf(codes.Internal, "stage %s: %v", r.ID, err)
	}
	return nil
}

// sharedSource is what a publish of a shared volume binds: its staging path, staged
// again first when that mount has died.
func (s *Server) sharedSource(ctx context.Context, p *storage.Pool, r *storage.Record, staging string) (*publishSource, error) {
	if staging == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "staging_target_path is required to publish shared volume %s", r.ID)
	}
	rel, err := s.checkTarget("staging_target_path", staging)
	if err != nil {
		return nil, err
	}
	mounted, err := mounter.IsMountPoint(staging)
	switch {
	case errors.Is(err, mounter.ErrStale):
		if err := s.stageShared(ctx, p, r, staging, rel); err != nil {
			return nil, err
		}
	case errors.Is(err, os.ErrNotExist) || err == nil && !mounted:
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged at %s", r.ID, staging)
	case err != nil:
		return nil, status.Errorf(codes.Internal, "check staging path %s: %v", staging, err)
	}
	m, err := mounter.At(staging)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "read mount at %s: %v", staging, err)
	}
	if same, err := mounter.SameSource(m, p.DataPath(r.Hash())); err != nil || !same {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged at %s", r.ID, staging)
	}
	return &publishSource{dir: staging, access: storage.AccessMount}, nil
}
