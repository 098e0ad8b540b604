package node

import (
	"context"
	"golang.org/x/sys/unix"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/mounter"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/loop"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// NodeExpandVolume grows a volume online, on the node that holds it: it raises the
// quota limit, or grows the image file, refreshes the loop device and grows the
// mounted filesystem. Berth expands on the node only (no controller EXPAND_VOLUME):
// see docs/design.md, "Expansion". Every step is idempotent, so kubelet's retry after
// a crash between growing the file and growing the filesystem finishes the job.
func (s *Server) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	id, volPath := req.GetVolumeId(), req.GetVolumePath()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if volPath == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_path is required")
	}
	if storage.IsAdopted(id) {
		return nil, status.Errorf(codes.InvalidArgument, "adopted volume %s has the size of its host directory's filesystem and cannot be expanded", id)
	}
	unlock, err := s.lock(id, "expand")
	if err != nil {
		return nil, err
	}
	defer unlock()
	p, r, err := s.resolve(id)
	if err != nil {
		return nil, err
	}
	if err := refuseExt4Growth(p, r, req.GetCapacityRange().GetRequiredBytes()); err != nil {
		return nil, err
	}
	grown, err := p.Expand(ctx, r.Hash(), req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes())
	if err != nil {
		return nil, csierr.Status(err)
	}
	if p.Kind() == storage.KindImage {
		if err := s.growImage(p, grown, req.GetStagingTargetPath()); err != nil {
			return nil, err
		}
	}
	klog.FromContext(ctx).V(2).Info("Volume expanded", "volumeID", id, "sizeBytes", grown.CapacityBytes)
	return &csi.NodeExpandVolumeResponse{CapacityBytes: grown.CapacityBytes}, nil
}

// growImage makes the loop device and the staged filesystem see the grown file.
func (s *Server) growImage(p *storage.Pool, r *storage.Record, staging string) error {
	dev, err := loop.Find(p.ImagePath(r.Hash()))
	if err != nil {
		return status.Errorf(codes.Internal, "find loop device of %s: %v", r.ID, err)
	}
	if dev == nil {
		return nil // not staged: the next stage attaches the grown file
	}
	if err := loop.SetCapacity(dev); err != nil {
		return status.Errorf(codes.Internal, "refresh size of %s: %v", dev.Path, err)
	}
	if r.AccessType == storage.AccessBlock {
		return nil
	}
	if staging == "" {
		st, err := p.Staged(r.Hash())
		if err != nil || st == nil {
			return status.Errorf(codes.FailedPrecondition, "volume %s: staging_target_path is required to grow its filesystem", r.ID)
		}
		staging = st.Path
	}
	if err := mounter.GrowFS(dev.Path, staging); err != nil {
		if r.FSType == "ext4" && !hasCapSysResource() {
			return ext4GrowthRefused(r)
		}
		return status.Errorf(codes.Internal, "%v", err)
	}
	return nil
}

// refuseExt4Growth refuses, before anything changes, to grow a staged ext4 volume
// when the filesystem could not follow: the volume would be recorded larger than its
// filesystem, and a smaller retry refused as a shrink. Asking for the size the volume
// has is let through (it only finishes an interrupted expansion, if any).
func refuseExt4Growth(p *storage.Pool, r *storage.Record, requiredBytes int64) error {
	if p.Kind() != storage.KindImage || r.AccessType != storage.AccessMount || r.FSType != "ext4" ||
		storage.AlignedSize(p.Kind(), requiredBytes) <= r.CapacityBytes || hasCapSysResource() {
		return nil
	}
	if dev, err := loop.Find(p.ImagePath(r.Hash())); err != nil || dev == nil {
		return nil // not staged: nothing mounted to grow now
	}
	return ext4GrowthRefused(r)
}

func ext4GrowthRefused(r *storage.Record) error {
	return status.Errorf(codes.FailedPrecondition,
		"volume %s: growing a mounted ext4 filesystem needs CAP_SYS_RESOURCE, which this driver lacks; "+
			"grant it to the node plugin's container, or use fsType xfs", r.ID)
}

// hasCapSysResource reports whether the process may resize a mounted ext4
// filesystem (the kernel checks CAP_SYS_RESOURCE for EXT4_IOC_RESIZE_FS).
func hasCapSysResource() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[0].Effective&(1<<unix.CAP_SYS_RESOURCE) != 0
}
