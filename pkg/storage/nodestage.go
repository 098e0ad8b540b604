package storage

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/berth-csi/berth/pkg/mounter"
)

// StageRequest is a NodeStageVolume in the engine's terms.
type StageRequest struct {
	VolumeID, StagingPath string
	Capability            Capability
	// ResyncFrom (the volume attribute AttrResyncFrom) names the volume this
	// one was cloned from by a move: it is resynced from it first (resync.go).
	ResyncFrom string
}

// Stage makes the volume ready to publish from the staging path, as its kind needs
// (an image attached and its filesystem mounted, a shared directory bound); kinds
// that need nothing only validate. A shared pool's volume asked for with a
// single-node access mode is claimed for this node first (nodeclaim.go). Adopted
// volumes need no staging. A volume with ResyncFrom is first resynced from that
// volume (Engine.Resync: ErrInProgress while it runs).
func (n *Node) Stage(ctx context.Context, req StageRequest) error {
	rel, err := n.checkTarget("staging_target_path", req.StagingPath)
	if err != nil {
		return err
	}
	if _, err := mounter.ParseFlags(req.Capability.MountFlags); err != nil {
		return fmt.Errorf("volume_capability.mount.mount_flags: %w: %w", err, ErrInvalid)
	}
	if IsAdopted(req.VolumeID) {
		return nil
	}
	p, r, err := n.e.Volume(req.VolumeID)
	if err != nil {
		return err
	}
	if err := p.CheckCapability(req.Capability); err != nil {
		return err
	}
	if req.Capability.Access != r.AccessType {
		return errorf(ErrInvalid, "volume %s was created for %s access, not %s", r.ID, r.AccessType, req.Capability.Access)
	}
	// The attribute stays on the PV for good: once resynced, a stage costs nothing more.
	if req.ResyncFrom != "" && !r.resyncedFrom(req.ResyncFrom) {
		if err := n.e.Resync(ctx, req.VolumeID, req.ResyncFrom); err != nil {
			return err
		}
	}
	taken, err := n.claim(ctx, p, r, req.Capability.Mode)
	if err != nil {
		return err
	}
	if err := p.nodeKind().Stage(ctx, n, p, r, req.StagingPath, rel, req.Capability); err != nil {
		if taken {
			n.releaseNew(ctx, p, r)
		}
		return err
	}
	return nil
}

// Unstage unmounts the staging path, gives up the volume's single-node claim (shared
// pools) and undoes the kind's staging. A volume that is not staged, or no longer
// exists, is success.
func (n *Node) Unstage(ctx context.Context, volumeID, staging string) error {
	if err := n.checkUnmountPath("staging_target_path", staging); err != nil {
		return err
	}
	if err := n.unmountAll(staging); err != nil {
		return fmt.Errorf("unmount %s: %w", staging, err)
	}
	// After a restart, a shared volume's staging bind looks like a publication.
	n.e.RemovePublication(volumeID, staging)
	if p, hash, err := n.e.Resolve(volumeID); err == nil {
		// Unstaged: nothing of the volume is left on this node.
		if err := n.release(ctx, p, volumeID, hash); err != nil {
			return err
		}
	}
	p, r, err := n.e.Volume(volumeID)
	if err != nil {
		return nil
	}
	return p.nodeKind().Unstage(ctx, n, p, r)
}

// ExpandRequest is a NodeExpandVolume in the engine's terms.
type ExpandRequest struct {
	VolumeID, VolumePath, StagingPath string
	RequiredBytes, LimitBytes         int64
}

// Expand grows a volume online on this node: the pool records the new size (raising
// a quota, growing an image file), then the kind makes the node see it (refreshing
// the loop device, growing the mounted filesystem). Every step is idempotent, so
// kubelet's retry after a crash between two of them finishes the job.
func (n *Node) Expand(ctx context.Context, req ExpandRequest) (*Record, error) {
	if IsAdopted(req.VolumeID) {
		return nil, errorf(ErrInvalid, "adopted volume %s has the size of its host directory's filesystem and cannot be expanded", req.VolumeID)
	}
	p, r, err := n.volume(req.VolumeID)
	if err != nil {
		return nil, err
	}
	if err := n.checkVolumePath(r, req.VolumePath, req.StagingPath); err != nil {
		return nil, err
	}
	kind := p.nodeKind()
	if err := kind.CheckGrow(n, p, r, req.RequiredBytes); err != nil {
		return nil, err
	}
	grown, err := p.Expand(ctx, r.Hash(), req.RequiredBytes, req.LimitBytes)
	if err != nil {
		return nil, err
	}
	if err := kind.GrowOnNode(ctx, n, p, grown, req.StagingPath); err != nil {
		return nil, err
	}
	return grown, nil
}

// checkVolumePath refuses an expansion whose volume_path is not where the volume is
// available on this node: it must be a path a publish target could be (under the
// kubelet directory, clean, no symlinked parent), and one of the volume's
// publications in the table (kubelet passes the pod's mount directory of a filesystem
// volume, the file a block volume is bound on) or the request's staging path (older
// kubelets expand between stage and publish, with both paths the same).
func (n *Node) checkVolumePath(r *Record, volumePath, staging string) error {
	if err := n.checkUnmountPath("volume_path", volumePath); err != nil {
		return err
	}
	if staging != "" {
		if err := n.checkUnmountPath("staging_target_path", staging); err != nil {
			return err
		}
		if volumePath == staging {
			return nil
		}
	}
	for _, pub := range n.e.Publications(r.PublicationID()) {
		if pub.TargetPath == volumePath {
			return nil
		}
	}
	return errorf(ErrPrecondition, "volume_path %s is neither a publication of volume %s on this node nor its staging_target_path", volumePath, r.ID)
}

// Stats measures the volume where it is published: its own bytes and inodes (not the
// whole filesystem's) as its kind measures them; an adopted directory's filesystem.
func (n *Node) Stats(ctx context.Context, volumeID, volumePath string) (Usage, error) {
	if IsAdopted(volumeID) {
		return fsStats(volumePath)
	}
	p, r, err := n.volume(volumeID)
	if err != nil {
		return Usage{}, err
	}
	switch _, err := os.Lstat(volumePath); {
	case errors.Is(err, os.ErrNotExist):
		return Usage{}, errorf(ErrNotFound, "volume_path %s does not exist", volumePath)
	case isStale(err):
		// The pool itself may answer again (remounted), this mount of it does not.
		return Usage{}, errorf(ErrStaleMount, "volume %s is inaccessible at %s: its mount no longer answers (%w); NodeStageVolume and NodePublishVolume replace it", volumeID, volumePath, err)
	}
	u, err := p.nodeKind().Stats(ctx, n, p, r, volumePath)
	if err == nil {
		p.noteUsage(r.Hash(), u)
	}
	return u, err
}

// Health reports the volume's condition on this node and, when a publish path is
// given, whether the volume is really mounted there. No problems means healthy.
func (n *Node) Health(_ context.Context, volumeID, publishPath string) ([]Problem, error) {
	if IsAdopted(volumeID) {
		return n.adoptedProblems(publishPath), nil
	}
	p, r, err := n.volume(volumeID)
	if err != nil {
		return nil, err
	}
	problems := p.Condition(r.Hash())
	if publishPath == "" {
		return problems, nil
	}
	problems = append(problems, p.nodeKind().PathProblems(n, p, r, publishPath)...)
	mounted, err := n.e.host.Mounts.IsMountPoint(publishPath)
	switch {
	case errors.Is(err, mounter.ErrStale):
		problems = append(problems, Problem{Kind: Inaccessible, Reason: "StaleMount",
			Message: "the mount at " + publishPath + " no longer answers: " + err.Error()})
	case err == nil && !mounted:
		problems = append(problems, Problem{Kind: Inaccessible, Reason: "NotMounted",
			Message: "the volume is not mounted at " + publishPath})
	}
	return problems, nil
}
