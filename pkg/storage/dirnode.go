package storage

import (
	"context"
	"path/filepath"
	"strings"

	"github.com/berth-csi/berth/pkg/mounter"
)

// localDirNode is the node side of kinds whose volume is a directory on this node's
// filesystem (dir, quota): nothing to stage, the data directory is what is bound.
type localDirNode struct{}

func (localDirNode) Stage(context.Context, *Node, *Pool, *Record, string, string, Capability) error {
	return nil
}

func (localDirNode) Unstage(context.Context, *Node, *Pool, *Record) error { return nil }

func (localDirNode) PublishSource(_ context.Context, _ *Node, p *Pool, r *Record, _ string) (*MountSource, error) {
	return &MountSource{Path: p.DataPath(r.Hash())}, nil
}

// Shows: a publication binds the data directory (a shared volume's, through its
// staging bind).
func (localDirNode) Shows(n *Node, p *Pool, r *Record, m *mounter.MountInfo) (bool, error) {
	return n.e.host.Mounts.SameSource(m, p.DataPath(r.Hash()))
}

func (localDirNode) CheckGrow(*Node, *Pool, *Record, int64) error { return nil }

func (localDirNode) GrowOnNode(context.Context, *Node, *Pool, *Record, string) error { return nil }

func (localDirNode) CanServeInline(*Pool) error { return nil }

func (localDirNode) PathProblems(*Node, *Pool, *Record, string) []Problem { return nil }

// Stats is the volume's own usage, as the kind measures it; a filesystem that no
// longer answers is ErrStaleMount (NodeGetVolumeHealth reports it in detail).
func (localDirNode) Stats(ctx context.Context, _ *Node, p *Pool, r *Record, _ string) (Usage, error) {
	u, err := p.Usage(ctx, r.Hash())
	if isStale(err) {
		return Usage{}, errorf(ErrStaleMount, "volume %s is inaccessible: its filesystem no longer answers (%w); NodeStageVolume remounts it", r.ID, err)
	}
	return u, err
}

// RecoverPublications finds the bind mounts of the pool's data directories: mounts
// of the filesystem holding volumes/ whose root is volumes/<hash>/data.
func (localDirNode) RecoverPublications(ctx context.Context, n *Node, p *Pool, mounts []*mounter.MountInfo) error {
	major, minor, root, err := n.e.host.Mounts.Locate(filepath.Join(p.cfg.Path, volumesDir))
	if err != nil {
		return err
	}
	root = filepath.Clean(root)
	for _, m := range mounts {
		if m.Major != major || m.Minor != minor {
			continue
		}
		hash, ok := dataDirHash(root, m.Root)
		if !ok {
			continue
		}
		if r, err := p.Get(hash); err == nil {
			n.recovered(ctx, r, m)
		}
	}
	return nil
}

// dataDirHash returns <hash> when mountRoot is volumesRoot/<hash>/data.
func dataDirHash(volumesRoot, mountRoot string) (string, bool) {
	rest, ok := strings.CutPrefix(mountRoot, strings.TrimSuffix(volumesRoot, "/")+"/")
	if !ok {
		return "", false
	}
	hash, data, ok := strings.Cut(rest, "/")
	if !ok || data != DataDir || len(hash) != hashLen || !isLowerHex(hash) {
		return "", false
	}
	return hash, true
}
