package node

import (
	"context"
	"errors"
	"os"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/mounter"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/loop"
	"github.com/berth-csi/berth/pkg/volcap"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// NodeStageVolume attaches an image volume's file to a loop device and, for a
// filesystem volume, formats it on first use and mounts it at the staging path.
// Directory volumes need no staging: the call only validates.
func (s *Server) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if staging == "" {
		return nil, status.Error(codes.InvalidArgument, "staging_target_path is required")
	}
	rel, err := s.checkTarget("staging_target_path", staging)
	if err != nil {
		return nil, err
	}
	vc := req.GetVolumeCapability()
	if vc == nil {
		return nil, status.Error(codes.InvalidArgument, "volume_capability is required")
	}
	if _, err := mounter.ParseFlags(vc.GetMount().GetMountFlags()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "volume_capability.mount.mount_flags: %v", err)
	}
	unlock, err := s.lock(id, staging)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if storage.IsAdopted(id) {
		return &csi.NodeStageVolumeResponse{}, nil
	}
	p, r, err := s.engine.Volume(id)
	if err != nil {
		return nil, csierr.Status(err)
	}
	access, err := volcap.CheckOne(vc, p)
	if err != nil {
		return nil, csierr.Status(err)
	}
	if access != r.AccessType {
		return nil, status.Errorf(codes.InvalidArgument, "volume %s was created for %s access, not %s", id, r.AccessType, access)
	}
	switch p.Kind() {
	case storage.KindImage:
		err = s.stageImage(ctx, p, r, staging, rel, vc)
	case storage.KindShared:
		err = s.stageShared(ctx, p, r, staging, rel)
	default:
		return &csi.NodeStageVolumeResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	klog.FromContext(ctx).V(2).Info("Volume staged", "volumeID", id, "stagingPath", staging)
	return &csi.NodeStageVolumeResponse{}, nil
}

// stageImage records the intent, attaches (or finds) the loop device and mounts it.
// Each step is idempotent, so a retry after a crash between any two of them works.
func (s *Server) stageImage(ctx context.Context, p *storage.Pool, r *storage.Record, staging, rel string, vc *csi.VolumeCapability) error {
	if st, err := p.Staged(r.Hash()); err != nil {
		return status.Errorf(codes.Internal, "read staging record: %v", err)
	} else if st != nil && st.Path != staging {
		return status.Errorf(codes.FailedPrecondition, "volume %s is already staged at %s", r.ID, st.Path)
	}
	if err := p.MarkStaged(r.Hash(), staging); err != nil {
		return status.Errorf(codes.Internal, "record staging of %s: %v", r.ID, err)
	}
	// Direct I/O: the volume's pages are cached once, by the filesystem on the
	// device, not again for the image file (docs/benchmarks.md, data path).
	dev, err := loop.AttachWith(p.ImagePath(r.Hash()), loop.Options{DirectIO: true})
	if err != nil {
		return status.Errorf(codes.Internal, "attach %s: %v", r.ID, err)
	}
	klog.FromContext(ctx).V(4).Info("Image attached", "volumeID", r.ID, "device", dev.Path, "directIO", dev.DirectIO)
	if r.AccessType == storage.AccessBlock {
		return nil
	}
	if err := s.prepareTarget(staging, rel, false); err != nil {
		return err
	}
	m, err := mounter.At(staging)
	if err != nil {
		return status.Errorf(codes.Internal, "read mount at %s: %v", staging, err)
	}
	if m != nil {
		if same, err := mounter.SameSource(m, dev.Path); err == nil && same || isDeviceMount(m, dev) {
			return nil
		}
		return status.Errorf(codes.FailedPrecondition, "staging_target_path %s is already a mount point of something else", staging)
	}
	// A volume restored or cloned into a larger size holds a smaller filesystem than
	// its device: grow it, offline for ext4 without CAP_SYS_RESOURCE, else once mounted.
	ext4Offline := r.FSType == "ext4" && !hasCapSysResource()
	if ext4Offline {
		if err := mounter.GrowExt4Offline(dev.Path); err != nil {
			return status.Errorf(codes.Internal, "stage %s: %v", r.ID, err)
		}
	}
	if err := mounter.FormatAndMount(dev.Path, staging, r.FSType, vc.GetMount().GetMountFlags()); err != nil {
		return status.Errorf(codes.Internal, "stage %s: %v", r.ID, err)
	}
	if !ext4Offline {
		if err := mounter.GrowFS(dev.Path, staging); err != nil {
			return status.Errorf(codes.Internal, "stage %s: %v", r.ID, err)
		}
	}
	return nil
}

// isDeviceMount reports whether mount m is the filesystem on loop device dev.
func isDeviceMount(m *mounter.MountInfo, dev *loop.Device) bool {
	var st unix.Stat_t
	if unix.Stat(dev.Path, &st) != nil {
		return false
	}
	return m.Major == int(unix.Major(st.Rdev)) && m.Minor == int(unix.Minor(st.Rdev))
}

// NodeUnstageVolume unmounts the staging path and detaches the loop device. A volume
// that is not staged, or no longer exists, is success.
func (s *Server) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	unlock, err := s.beginUnmount(id, "staging_target_path", staging)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := unmountAll(staging); err != nil {
		return nil, status.Errorf(codes.Internal, "unmount %s: %v", staging, err)
	}
	// After a restart, a shared volume's staging bind looks like a publication.
	s.engine.RemovePublication(id, staging)
	p, r, err := s.engine.Volume(id)
	if err != nil || p.Kind() != storage.KindImage {
		return &csi.NodeUnstageVolumeResponse{}, nil
	}
	if err := loop.DetachFile(p.ImagePath(r.Hash())); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "detach %s: %v", id, err)
	}
	if err := p.ClearStaged(r.Hash()); err != nil {
		return nil, status.Errorf(codes.Internal, "clear staging record of %s: %v", id, err)
	}
	klog.FromContext(ctx).V(2).Info("Volume unstaged", "volumeID", id, "stagingPath", staging)
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// imageSource is what a publish of an image volume mounts: the staged filesystem, or
// the loop device itself for a block volume.
func imageSource(p *storage.Pool, r *storage.Record, staging string) (*publishSource, error) {
	if r.AccessType == storage.AccessBlock {
		dev, err := loop.Find(p.ImagePath(r.Hash()))
		if err != nil {
			return nil, status.Errorf(codes.Internal, "find loop device of %s: %v", r.ID, err)
		}
		if dev == nil {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged", r.ID)
		}
		return &publishSource{dir: dev.Path, access: storage.AccessBlock, block: true}, nil
	}
	if staging == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "staging_target_path is required to publish image volume %s", r.ID)
	}
	m, err := mounter.At(staging)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "read mount at %s: %v", staging, err)
	}
	dev, ferr := loop.Find(p.ImagePath(r.Hash()))
	if m == nil || ferr != nil || dev == nil || !isDeviceMount(m, dev) {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged at %s", r.ID, staging)
	}
	return &publishSource{dir: staging, access: storage.AccessMount}, nil
}
