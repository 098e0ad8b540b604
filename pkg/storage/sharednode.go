package storage

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/berth-csi/berth/pkg/mounter"
	"k8s.io/klog/v2"
)

// The node side of shared pools. A shared volume is staged by binding its data
// directory (on the pool's one mount of the distributed filesystem) at the staging
// path; publish binds the staging path to each target. When the filesystem's client
// dies (a killed FUSE process), every bind of it answers ENOTCONN: the next stage
// remounts the pool and binds the staging path again, and the next publish of a
// target replaces its dead mount. Start-up, stats and growth are a directory's.

// Stage makes sure the pool answers (remounting it when its mount died) and that the
// staging path shows the volume's data directory. Idempotent.
func (b *sharedBackend) Stage(ctx context.Context, n *Node, p *Pool, r *Record, staging, rel string, _ Capability) error {
	if err := p.usable(ctx); err != nil {
		return fmt.Errorf("stage %s: %w", r.ID, err)
	}
	if err := n.prepareTarget(staging, rel, false); err != nil {
		return err
	}
	data := p.DataPath(r.Hash())
	mounted, err := b.mounts.IsMountPoint(staging)
	switch {
	case errors.Is(err, mounter.ErrStale):
		klog.FromContext(ctx).Info("Replacing dead staging mount", "volumeID", r.ID, "stagingPath", staging)
		if err := n.unmountAll(staging); err != nil {
			return fmt.Errorf("unmount dead staging mount %s: %w", staging, err)
		}
	case err != nil:
		return fmt.Errorf("check staging path %s: %w", staging, err)
	case mounted:
		m, err := b.mounts.At(staging)
		if err != nil {
			return fmt.Errorf("read mount at %s: %w", staging, err)
		}
		if same, err := b.mounts.SameSource(m, data); err == nil && same {
			return nil
		}
		return errorf(ErrPrecondition, "staging_target_path %s is already a mount point of something else", staging)
	}
	if err := b.mounts.Bind(data, staging, mounter.Options{}); err != nil {
		return fmt.Errorf("stage %s: %w", r.ID, err)
	}
	return nil
}

// Unstage has nothing to undo once the staging bind is unmounted.
func (*sharedBackend) Unstage(context.Context, *Node, *Pool, *Record) error { return nil }

// PublishSource is the staging path, staged again first when that mount has died.
func (b *sharedBackend) PublishSource(ctx context.Context, n *Node, p *Pool, r *Record, staging string) (*MountSource, error) {
	if staging == "" {
		return nil, errorf(ErrNotStaged, "staging_target_path is required to publish shared volume %s", r.ID)
	}
	rel, err := n.checkTarget("staging_target_path", staging)
	if err != nil {
		return nil, err
	}
	mounted, err := b.mounts.IsMountPoint(staging)
	switch {
	case errors.Is(err, mounter.ErrStale):
		if err := b.Stage(ctx, n, p, r, staging, rel, Capability{}); err != nil {
			return nil, err
		}
	case errors.Is(err, os.ErrNotExist) || err == nil && !mounted:
		return nil, errorf(ErrNotStaged, "volume %s is not staged at %s", r.ID, staging)
	case err != nil:
		return nil, fmt.Errorf("check staging path %s: %w", staging, err)
	}
	m, err := b.mounts.At(staging)
	if err != nil {
		return nil, fmt.Errorf("read mount at %s: %w", staging, err)
	}
	if same, err := b.mounts.SameSource(m, p.DataPath(r.Hash())); err != nil || !same {
		return nil, errorf(ErrNotStaged, "volume %s is not staged at %s", r.ID, staging)
	}
	return &MountSource{Path: staging}, nil
}

// RecoverPublications finds the publications a directory's way, then takes back the
// single-node claims of the volumes still mounted here (nodeclaim.go).
func (b *sharedBackend) RecoverPublications(ctx context.Context, n *Node, p *Pool, mounts []*mounter.MountInfo) error {
	if err := b.localDirNode.RecoverPublications(ctx, n, p, mounts); err != nil {
		return err
	}
	n.retakeClaims(ctx, p)
	return nil
}

// CanServeInline refuses inline volumes: they live on one node with one pod.
func (*sharedBackend) CanServeInline(p *Pool) error {
	return errorf(ErrInvalid, "ephemeral volumes cannot use shared pool %s: they live on one node with one pod; use a dir or quota pool", p.cfg.Name)
}
