package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/berth-csi/berth/pkg/mounter"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// PublishRequest is a NodePublishVolume in the engine's terms.
type PublishRequest struct {
	VolumeID, TargetPath, StagingPath string
	Capability                        Capability
	ReadOnly                          bool
	// VolumeContext carries an ephemeral inline volume's attributes, or the host
	// directory of an adopted volume.
	VolumeContext map[string]string
}

// Publish bind-mounts the volume at the target path, always nosuid and nodev,
// read-only when asked. Publishing the same volume at the same target again is
// success; with another read-only flag, other mount flags or another access mode it
// is ErrExists. A shared pool's volume published with a single-node access mode is
// claimed for this node (nodeclaim.go): another node's claim is ErrPrecondition. An
// ephemeral inline volume is created first, and deleted again when the publish fails
// (kubelet never unpublishes a publish refused with a final error).
func (n *Node) Publish(ctx context.Context, req PublishRequest) (err error) {
	rel, err := n.checkTarget("target_path", req.TargetPath)
	if err != nil {
		return err
	}
	flags, err := mounter.ParseFlags(req.Capability.MountFlags)
	if err != nil {
		return fmt.Errorf("volume_capability.mount.mount_flags: %w: %w", err, ErrInvalid)
	}
	src, err := n.publishSource(ctx, req)
	if err != nil {
		return err
	}
	defer src.close()
	// bound: the volume is mounted at the target; an error after that (I/O limits
	// not written) keeps the mount for kubelet's retry, and undoes nothing.
	bound := false
	if src.ephemeral {
		defer func() {
			if err != nil && !bound {
				n.dropEphemeral(ctx, req.VolumeID)
			}
		}()
	}
	id, target, c := req.VolumeID, req.TargetPath, req.Capability
	// A "ro" mount flag makes the mount read-only too: record it so, or a retry of this
	// very request would find a read-only mount and answer AlreadyExists.
	readOnly := req.ReadOnly || c.Mode.ReaderOnly() || flags&unix.MS_RDONLY != 0
	pub := Publication{TargetPath: target, ReadOnly: readOnly, SingleWriter: c.Mode.SingleWriter(),
		Flags: flags &^ (unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV), Mode: c.Mode}
	if done, err := n.published(id, src.Path, pub); done || err != nil {
		if err == nil {
			err = n.publishIO(ctx, id, target) // a retry writes them again
		}
		return err
	}
	for _, pub := range n.e.Publications(id) {
		if pub.TargetPath != target && (c.Mode.SingleWriter() || pub.SingleWriter) {
			return errorf(ErrPrecondition, "volume %s is SINGLE_NODE_SINGLE_WRITER and already published at %s", id, pub.TargetPath)
		}
	}
	if src.pool != nil {
		taken, cerr := n.claim(ctx, src.pool, src.record, c.Mode)
		if cerr != nil {
			return cerr
		}
		if taken {
			defer func() {
				if err != nil && !bound {
					n.releaseNew(ctx, src.pool, src.record)
				}
			}()
		}
	}
	if err := n.applyMountGroup(ctx, req, src, readOnly); err != nil {
		return err
	}
	if err := n.prepareTarget(target, rel, src.Block); err != nil {
		return err
	}
	bind := n.e.host.Mounts.Bind
	if src.Block {
		bind = n.e.host.Mounts.BindBlock
	}
	if err := bind(src.bindPath(), target, mounter.Options{ReadOnly: readOnly, Flags: flags}); err != nil {
		return fmt.Errorf("bind mount %s at %s: %w", id, target, err)
	}
	bound = true
	n.e.AddPublication(id, pub)
	klog.FromContext(ctx).V(4).Info("Bind mounted", "volumeID", id, "targetPath", target, "source", src.Path, "readOnly", readOnly)
	// Limits that cannot be written fail the publish, mount kept: kubelet retries it
	// and the retry finds the mount and writes them.
	return n.publishIO(ctx, id, target)
}

// publishSource is what a publish mounts, with what it took to find it.
type publishSource struct {
	MountSource
	handle    *os.File // adopted directories: the checked O_PATH handle to mount
	ephemeral bool
	pool      *Pool // a pool volume's pool and record; nil for an adopted directory
	record    *Record
}

// bindPath is the path handed to mount(2): the checked handle when there is one, so
// the directory that passed the checks is the one mounted even if a path component
// is swapped meanwhile.
func (s *publishSource) bindPath() string {
	if s.handle != nil {
		return fmt.Sprintf("/proc/self/fd/%d", s.handle.Fd())
	}
	return s.Path
}

func (s *publishSource) close() {
	if s.handle != nil {
		s.handle.Close()
	}
}

// publishSource resolves what a publish request mounts: an adopted host directory,
// or a pool volume (created first when it is an ephemeral inline volume), as its kind
// serves it.
func (n *Node) publishSource(ctx context.Context, req PublishRequest) (*publishSource, error) {
	if IsAdopted(req.VolumeID) {
		return n.adoptedSource(req)
	}
	p, r, err := n.publishedVolume(ctx, req)
	if err != nil {
		return nil, err
	}
	src, err := n.kindSource(ctx, p, r, req)
	if err != nil {
		if r.Ephemeral {
			n.dropEphemeral(ctx, req.VolumeID)
		}
		return nil, err
	}
	return &publishSource{MountSource: *src, ephemeral: r.Ephemeral, pool: p, record: r}, nil
}

func (n *Node) kindSource(ctx context.Context, p *Pool, r *Record, req PublishRequest) (*MountSource, error) {
	if err := p.CheckCapability(req.Capability); err != nil {
		return nil, err
	}
	if req.Capability.Access != r.AccessType {
		return nil, errorf(ErrInvalid, "volume %s was created for %s access, not %s", r.ID, r.AccessType, req.Capability.Access)
	}
	return p.nodeKind().PublishSource(ctx, n, p, r, req.StagingPath)
}

// published reports whether pub's target already shows this volume: done with nil
// when the mount matches, ErrExists when it was published with another read-only
// flag, other mount flags or another access mode, ErrPrecondition when something else
// is mounted there. A dead mount there is removed. What is known of the earlier
// publish is the table's record of it; after a restart, until the same publish comes
// again, only what the mount table shows (the read-only flag and the per-mount flags).
func (n *Node) published(id, source string, pub Publication) (bool, error) {
	target := pub.TargetPath
	m := n.e.host.Mounts
	mounted, err := m.IsMountPoint(target)
	if errors.Is(err, mounter.ErrStale) {
		if uerr := m.Unmount(target); uerr != nil {
			return false, fmt.Errorf("unmount stale %s: %w", target, uerr)
		}
		n.e.RemovePublication(id, target)
		return false, nil
	}
	if err != nil || !mounted {
		n.e.RemovePublication(id, target)
		return false, nil
	}
	at, err := m.At(target)
	if err != nil {
		return false, fmt.Errorf("read mount at %s: %w", target, err)
	}
	same, err := m.SameSource(at, source)
	if err != nil {
		return false, fmt.Errorf("compare mount at %s: %w", target, err)
	}
	if !same {
		return false, errorf(ErrPrecondition, "target_path %s is already a mount point of something else", target)
	}
	if at.ReadOnly != pub.ReadOnly {
		return false, errorf(ErrExists, "volume %s is already published at %s with readonly=%t", id, target, at.ReadOnly)
	}
	if known, ok := n.e.Publication(id, target); ok && !known.Recovered {
		if known.Flags != pub.Flags || known.Mode != pub.Mode {
			return false, errorf(ErrExists, "volume %s is already published at %s with access mode %s and mount flags %s, not %s and %s",
				id, target, known.Mode, mounter.FormatFlags(known.Flags), pub.Mode, mounter.FormatFlags(pub.Flags))
		}
		return true, nil
	}
	if !mounter.ShowsFlags(at, pub.Flags) {
		return false, errorf(ErrExists, "volume %s is already published at %s with mount options %s, not with the mount flags asked (%s)",
			id, target, at.Options, mounter.FormatFlags(pub.Flags))
	}
	// Known now: a publication recovered after a restart is whole again.
	n.e.AddPublication(id, pub)
	return true, nil
}

// Unpublish unmounts the target and removes it if it is left empty. A missing
// target, an unmounted one or a stale mount is success; a target that is another
// volume's is ErrPrecondition (ownsTarget). An ephemeral volume is deleted with its
// last publication.
func (n *Node) Unpublish(ctx context.Context, volumeID, target string) error {
	if err := n.checkUnmountPath("target_path", target); err != nil {
		return err
	}
	if err := n.ownsTarget(volumeID, target); err != nil {
		return err
	}
	_, dev, limited, _ := n.volumeIO(volumeID) // the device, while the volume is still there
	if err := n.unmountAll(target); err != nil {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	n.e.RemovePublication(volumeID, target)
	if limited {
		n.unpublishIO(ctx, target, dev)
	}
	if err := removeTarget(target); err != nil {
		return fmt.Errorf("remove target %s: %w", target, err)
	}
	return n.deleteEphemeral(ctx, volumeID)
}

// ownsTarget refuses, before anything is unmounted, to unpublish volumeID at a target
// that is another's: one the publication table records for another volume (whose
// publication would be left stale), or, when the table records it for none, one
// holding a live mount that volumeID's kind says is not the volume (another driver's
// or an operator's mount: Berth's own are all in the table, rebuilt at start-up).
// What cannot be told is unpublished as before, since kubelet must be able to clean
// its pods' targets: a target with nothing or a dead mount on it, a volume this node
// does not know (deleted from another host, an unreadable record) and an adopted
// directory, whose publications are not rebuilt after a restart.
func (n *Node) ownsTarget(volumeID, target string) error {
	owners := n.e.PublishedAt(target)
	if slices.Contains(owners, volumeID) {
		return nil
	}
	if len(owners) > 0 {
		return errorf(ErrPrecondition, "target_path %s is a publication of volume %s, not of volume %s: nothing was unmounted",
			target, owners[0], volumeID)
	}
	if mounted, err := n.e.host.Mounts.IsMountPoint(target); err != nil || !mounted || IsAdopted(volumeID) {
		return nil
	}
	p, r, err := n.volume(volumeID)
	if err != nil {
		return nil
	}
	m, err := n.e.host.Mounts.At(target)
	if err != nil || m == nil {
		return nil
	}
	if shows, err := p.nodeKind().Shows(n, p, r, m); err != nil || shows {
		return nil
	}
	return errorf(ErrPrecondition, "target_path %s holds a mount of %s (%s, root %s) that is not volume %s, and no publication "+
		"on this node records it: nothing was unmounted; unmount it by hand if it is a leftover", target, m.Source, m.FSType, m.Root, volumeID)
}
