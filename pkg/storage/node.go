package storage

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/berth-csi/berth/pkg/mounter"
	"k8s.io/klog/v2"
)

// Node is the node side of the engine: it stages and publishes this node's volumes
// at paths under the kubelet directory, measures them where they are published, and
// keeps the engine's publication table true. Each pool kind does its own part of the
// work through NodeBackend; Node holds what every kind shares (targets, binds, the
// table, ephemeral and adopted volumes). The caller holds the volume's and the
// path's locks.
type Node struct {
	e          *Engine
	kubeletDir string // resolved: publish paths are compared with it as the kernel shows them
	nodeID     string
	grace      time.Duration // how long another node's claim without its lock is honoured

	claimMu sync.Mutex
	claims  map[string]*claim // volume ID -> the single-node claim held (nodeclaim.go)
	orphans map[string]orphan // volume ID -> another node's claim found without its lock

	ioMu sync.Mutex // one pod's I/O limits are written at a time (nodeio.go)
}

// NodeConfig is what the node side of the engine needs to know of its node.
type NodeConfig struct {
	// KubeletDir is the kubelet's directory: publish and staging paths lie under it.
	KubeletDir string
	// NodeID names the node in the single-node claims of shared pools' volumes.
	NodeID string
	// ClaimGrace is how long another node's claim whose lock nobody holds is still
	// refused (0: DefaultClaimGrace).
	ClaimGrace time.Duration
}

// NodeBackend is the node-side half of a pool kind.
type NodeBackend interface {
	// Stage makes a volume ready to be published from the staging path (a loop
	// device and its filesystem, a bind of a shared directory...). Idempotent: each
	// step finds its work done after a crash between two of them.
	Stage(ctx context.Context, n *Node, p *Pool, r *Record, staging, stagingRel string, c Capability) error
	// Unstage undoes Stage once the staging path has been unmounted. Idempotent.
	Unstage(ctx context.Context, n *Node, p *Pool, r *Record) error
	// PublishSource is what a publish binds at its target.
	PublishSource(ctx context.Context, n *Node, p *Pool, r *Record, staging string) (*MountSource, error)
	// CheckGrow refuses, before anything changes, a growth to newBytes that this
	// node could not follow.
	CheckGrow(n *Node, p *Pool, r *Record, newBytes int64) error
	// GrowOnNode makes the node see a volume grown to r.CapacityBytes.
	GrowOnNode(ctx context.Context, n *Node, p *Pool, r *Record, staging string) error
	// RecoverPublications finds the pool's publications in the mount table at
	// start-up and undoes what a crash left half done.
	RecoverPublications(ctx context.Context, n *Node, p *Pool, mounts []*mounter.MountInfo) error
	// Stats measures a volume published at volumePath.
	Stats(ctx context.Context, n *Node, p *Pool, r *Record, volumePath string) (Usage, error)
	// Shows reports whether mount m shows the volume as its publications do; an
	// error when that cannot be told (an image no longer attached).
	Shows(n *Node, p *Pool, r *Record, m *mounter.MountInfo) (bool, error)
	// PathProblems reports what is wrong with the volume as seen at its publish path.
	PathProblems(n *Node, p *Pool, r *Record, path string) []Problem
	// CanServeInline is nil when CSI ephemeral inline volumes may use the pool.
	CanServeInline(p *Pool) error
}

// MountSource is what a publish mounts at its target.
type MountSource struct {
	Path  string // the directory (or the device, Block) shown at the target
	Block bool   // a block device, bound onto a file
}

// Node returns the node side of the engine, publishing under cfg.KubeletDir. The
// directory is resolved once, so a symlinked /var/lib/kubelet (common on some
// distributions) is compared by its real path.
func (e *Engine) Node(cfg NodeConfig) (*Node, error) {
	kubeletDir := cfg.KubeletDir
	if !filepath.IsAbs(kubeletDir) {
		return nil, fmt.Errorf("kubelet dir %q must be absolute: %w", kubeletDir, ErrInvalid)
	}
	if cfg.NodeID == "" {
		return nil, fmt.Errorf("node ID is required: %w", ErrInvalid)
	}
	real, err := filepath.EvalSymlinks(kubeletDir)
	if err != nil {
		return nil, fmt.Errorf("kubelet dir: %w", err)
	}
	grace := cfg.ClaimGrace
	if grace <= 0 {
		grace = DefaultClaimGrace
	}
	n := &Node{e: e, kubeletDir: real, nodeID: cfg.NodeID, grace: grace,
		claims: map[string]*claim{}, orphans: map[string]orphan{}}
	e.onServed = n.recoverPool
	e.node = n
	return n, nil
}

// Engine is the engine this node side belongs to.
func (n *Node) Engine() *Engine { return n.e }

// Host is what the node reaches the machine through.
func (n *Node) Host() Host { return n.e.host }

// volume finds a volume by the ID the CO uses on a node: a Berth volume ID, or
// kubelet's ID of an ephemeral inline volume.
func (n *Node) volume(id string) (*Pool, *Record, error) {
	p, r, err := n.e.Volume(id)
	if err == nil {
		return p, r, nil
	}
	if p, r, ok := n.e.Ephemeral(id); ok {
		return p, r, nil
	}
	return nil, nil, err
}

// nodeKind is the node-side half of the pool's kind.
func (p *Pool) nodeKind() NodeBackend { return p.backend }

// Recover rebuilds the publication table from the mount table, the only authority on
// what is mounted: after a restart, every mount of a volume found there is a
// publication, whatever the driver remembered before. Each kind also undoes what a
// crash left half done on this node (a loop device without its staging record).
func (n *Node) Recover(ctx context.Context) error {
	mounts, err := n.e.host.Mounts.All()
	if err != nil {
		return err
	}
	for _, p := range n.e.pools {
		if p.Health() != nil {
			continue // not served (a shared pool whose filesystem could not be mounted)
		}
		if err := p.nodeKind().RecoverPublications(ctx, n, p, mounts); err != nil {
			return fmt.Errorf("pool %s: %w", p.cfg.Name, err)
		}
	}
	return nil
}

// recoverPool finds the publications of a pool that has just become served, as
// Recover does at start-up for the pools served then.
func (n *Node) recoverPool(ctx context.Context, p *Pool) {
	mounts, err := n.e.host.Mounts.All()
	if err == nil {
		err = p.nodeKind().RecoverPublications(ctx, n, p, mounts)
	}
	if err != nil {
		klog.FromContext(ctx).Error(err, "Cannot recover the publications of a pool served again", "pool", p.Name())
	}
}

// recovered adds a publication found at start-up.
func (n *Node) recovered(ctx context.Context, r *Record, m *mounter.MountInfo) {
	id := r.PublicationID()
	n.e.AddPublication(id, Publication{TargetPath: m.Mountpoint, ReadOnly: m.ReadOnly, Recovered: true})
	klog.FromContext(ctx).V(2).Info("Publication recovered", "volumeID", id, "targetPath", m.Mountpoint)
}

// PublicationID is the ID the CO publishes the volume under: kubelet's own volume ID
// for an ephemeral inline volume, the volume's ID otherwise.
func (r *Record) PublicationID() string {
	if r.Ephemeral {
		if id, ok := cutEphemeral(r.Name); ok {
			return id
		}
	}
	return r.ID
}
