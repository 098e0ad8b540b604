package node

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/mounter"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/volcap"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// NodePublishVolume bind-mounts the volume's data directory at the target path,
// always nosuid and nodev, read-only when asked.
func (s *Server) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (_ *csi.NodePublishVolumeResponse, err error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	rel, err := s.checkTarget("target_path", target)
	if err != nil {
		return nil, err
	}
	vc := req.GetVolumeCapability()
	if vc == nil {
		return nil, status.Error(codes.InvalidArgument, "volume_capability is required")
	}
	flags, err := mounter.ParseFlags(vc.GetMount().GetMountFlags())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "volume_capability.mount.mount_flags: %v", err)
	}
	unlock, err := s.lock(id, target)
	if err != nil {
		return nil, err
	}
	defer unlock()

	src, err := s.source(ctx, req)
	if err != nil {
		return nil, err
	}
	defer src.close()
	if src.ephemeral {
		// kubelet never unpublishes a publish refused with a final error: a refused
		// ephemeral publish deletes its volume unless it is published elsewhere.
		defer func() {
			if err != nil {
				if derr := s.deleteEphemeral(ctx, id); derr != nil {
					klog.FromContext(ctx).Error(derr, "Cannot delete ephemeral volume of a refused publish", "volumeID", id)
				}
			}
		}()
	}
	access := src.access
	// A "ro" mount flag makes the mount read-only too: record it so, or a retry of this
	// very request would find a read-only mount and answer AlreadyExists.
	readOnly := req.GetReadonly() || volcap.ReaderOnly(vc) || flags&unix.MS_RDONLY != 0
	source := src.dir

	// Idempotency: the same volume already mounted here.
	if done, err := s.existing(id, target, source, readOnly); done || err != nil {
		return &csi.NodePublishVolumeResponse{}, err
	}
	for _, pub := range s.engine.Publications(id) {
		if pub.TargetPath != target && (volcap.SingleWriter(vc) || pub.SingleWriter) {
			return nil, status.Errorf(codes.FailedPrecondition,
				"volume %s is SINGLE_NODE_SINGLE_WRITER and already published at %s", id, pub.TargetPath)
		}
	}
	if err := s.prepareTarget(target, rel, access == storage.AccessBlock); err != nil {
		return nil, err
	}
	bind := mounter.Bind
	if src.block {
		bind = mounter.BindBlock
	}
	if err := bind(src.bindPath(), target, mounter.Options{ReadOnly: readOnly, Flags: flags}); err != nil {
		return nil, status.Errorf(codes.Internal, "bind mount %s at %s: %v", id, target, err)
	}
	s.engine.AddPublication(id, storage.Publication{TargetPath: target, ReadOnly: readOnly, SingleWriter: volcap.SingleWriter(vc)})
	klog.FromContext(ctx).V(2).Info("Volume published", "volumeID", id, "targetPath", target, "readOnly", readOnly)
	return &csi.NodePublishVolumeResponse{}, nil
}

// publishSource is what a publish mounts.
type publishSource struct {
	dir       string   // the directory (its real path) shown at the target
	handle    *os.File // adopted directories: the checked O_PATH handle to mount
	access    string
	ephemeral bool
	block     bool // dir is a block device, bound onto a file
}

// bindPath is the path handed to mount(2): the checked handle when there is one, so
// the directory that passed the checks is the one mounted even if a path component
// is swapped meanwhile.
func (p *publishSource) bindPath() string {
	if p.handle != nil {
		return fmt.Sprintf("/proc/self/fd/%d", p.handle.Fd())
	}
	return p.dir
}

func (p *publishSource) close() {
	if p.handle != nil {
		p.handle.Close()
	}
}

// source resolves what a publish request mounts: an adopted host directory, or a
// pool volume (created first when it is an ephemeral inline volume).
func (s *Server) source(ctx context.Context, req *csi.NodePublishVolumeRequest) (*publishSource, error) {
	vc := req.GetVolumeCapability()
	if storage.IsAdopted(req.GetVolumeId()) {
		return s.adoptedSource(req)
	}
	p, r, err := s.volumeFor(ctx, req)
	if err != nil {
		return nil, err
	}
	src := &publishSource{dir: p.DataPath(r.Hash()), access: r.AccessType, ephemeral: r.Ephemeral}
	access, err := volcap.CheckOne(vc, p)
	if err == nil && access != r.AccessType {
		err = status.Errorf(codes.InvalidArgument, "volume %s was created for %s access, not %s", r.ID, r.AccessType, access)
	}
	if err == nil && p.Kind() == storage.KindImage {
		src, err = imageSource(p, r, req.GetStagingTargetPath())
	}
	if err == nil && p.Kind() == storage.KindShared {
		src, err = s.sharedSource(ctx, p, r, req.GetStagingTargetPath())
	}
	if err != nil {
		if r.Ephemeral {
			if derr := s.deleteEphemeral(ctx, req.GetVolumeId()); derr != nil {
				klog.FromContext(ctx).Error(derr, "Cannot delete ephemeral volume of a refused publish", "volumeID", req.GetVolumeId())
			}
		}
		return nil, csierr.Status(err)
	}
	return src, nil
}

// existing reports whether target already shows this volume: done with nil when the
// mount matches, AlreadyExists when its read-only flag differs, FailedPrecondition when
// something else is mounted there.
func (s *Server) existing(id, target, source string, readOnly bool) (bool, error) {
	mounted, err := mounter.IsMountPoint(target)
	if errors.Is(err, mounter.ErrStale) {
		if uerr := mounter.Unmount(target); uerr != nil {
			return false, status.Errorf(codes.Internal, "unmount stale %s: %v", target, uerr)
		}
		s.engine.RemovePublication(id, target)
		return false, nil
	}
	if err != nil || !mounted {
		s.engine.RemovePublication(id, target)
		return false, nil
	}
	m, err := mounter.At(target)
	if err != nil {
		return false, status.Errorf(codes.Internal, "read mount at %s: %v", target, err)
	}
	same, err := mounter.SameSource(m, source)
	if err != nil {
		return false, status.Errorf(codes.Internal, "compare mount at %s: %v", target, err)
	}
	if !same {
		return false, status.Errorf(codes.FailedPrecondition, "target_path %s is already a mount point of something else", target)
	}
	if m.ReadOnly != readOnly {
		return false, status.Errorf(codes.AlreadyExists,
			"volume %s is already published at %s with readonly=%t", id, target, m.ReadOnly)
	}
	return true, nil
}

// NodeUnpublishVolume unmounts the target and removes it if it is left empty. A missing
// target, an unmounted one or a stale mount is success. An ephemeral volume is deleted
// with its last publication.
func (s *Server) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	unlock, err := s.beginUnmount(id, "target_path", target)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := unmountAll(target); err != nil {
		return nil, status.Errorf(codes.Internal, "unmount %s: %v", target, err)
	}
	s.engine.RemovePublication(id, target)
	if err := removeTarget(target); err != nil {
		return nil, status.Errorf(codes.Internal, "remove target %s: %v", target, err)
	}
	if err := s.deleteEphemeral(ctx, id); err != nil {
		return nil, err
	}
	klog.FromContext(ctx).V(2).Info("Volume unpublished", "volumeID", id, "targetPath", target)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// maxStacked bounds how many mounts stacked on one target an unpublish removes.
const maxStacked = 16

func unmountAll(target string) error {
	for range maxStacked {
		mounted, err := mounter.IsMountPoint(target)
		if errors.Is(err, mounter.ErrStale) {
			// mounted says whether the dead mount sits at target itself.
		} else if errors.Is(err, os.ErrNotExist) {
			return nil
		} else if err != nil {
			return err
		}
		if !mounted {
			return nil
		}
		if err := mounter.Unmount(target); err != nil {
			return err
		}
	}
	return fmt.Errorf("more than %d mounts stacked on %s", maxStacked, target)
}
