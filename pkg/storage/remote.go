package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/berth-csi/berth/pkg/storage/quota"
	"k8s.io/klog/v2"
)

// Remote reaches the volumes and snapshots that the other nodes' pools of the same
// name hold (the driver's transfer channel between node plugins): a restore or
// clone in a node-local pool whose source this node lacks pulls it from the node
// that has it. The engine knows nothing of how.
type Remote interface {
	// Locate names the node holding src, and its address; ErrNotFound when no
	// node does (or only this one, which lacks it).
	Locate(ctx context.Context, src *Source) (Peer, error)
	// Fetch copies src from peer into dest, which must not exist: the directory
	// tree (a directory kind's data) or the image file, as the source holds it,
	// refusing more than maxBytes. progress, when not nil, is told the bytes
	// received so far. ErrNotFound when the source is gone.
	Fetch(ctx context.Context, src *Source, peer Peer, dest string, maxBytes int64, progress func(int64)) (*Fetched, error)
}

// Peer is another node's plugin.
type Peer struct {
	Node, Address string
}

// Fetched is what a Fetch received: a tree or an image, and the source's
// capacity, access type and filesystem (an image's); the source's generation
// and the sender's clock when it began reading it (zero when unknown); what was
// received, and (a delta) what was not needed.
type Fetched struct {
	Tree       bool
	SizeBytes  int64
	AccessType string
	FSType     string
	Generation string
	Since      time.Time
	Bytes      int64
	Skipped    int64
	Delta      bool
}

// DeltaRemote is a Remote that can bring a copy an earlier Fetch made up to
// date with its source, receiving only what changed (resync.go uses it when the
// Remote has it, else it fetches in full).
type DeltaRemote interface {
	// FetchDelta updates base (the tree or image file a Fetch of src made,
	// recorded as from), using staging (a directory beside it, which it may
	// find left by an interrupted attempt) for the work: the tree is made
	// anew there and exchanged with base, the image patched in place. When the
	// source is no longer of from's generation it is received in full and
	// exchanged all the same. ErrNotBase when base proves not to be a copy of
	// src: the caller fetches in full.
	FetchDelta(ctx context.Context, src *Source, peer Peer, base, staging string, from Pulled, maxBytes int64, progress func(int64)) (*Fetched, error)
}

// ErrNotBase: a delta fetch's base is not a copy of its source. The engine
// never returns it: it fetches in full instead.
var ErrNotBase = errors.New("not a copy of the source")

// SetRemote lets node-local pools pull restore and clone sources from other
// nodes through r. Call it before Start, or at least before the first create.
func (e *Engine) SetRemote(r Remote) {
	for _, p := range e.pools {
		p.remote = r
	}
}

// nowhere marks a source that no node holds: it stays ErrNotFound, never
// "try another node".
type nowhere struct{ err error }

func (n nowhere) Error() string { return n.err.Error() }
func (n nowhere) Unwrap() error { return n.err }

// locateSource is checkSource for a source this pool lacks (err, ErrNotFound):
// in a node-local pool with a Remote, another node may hold it. It returns the
// node to pull from, or an error: ErrNotFound (wrapped in nowhere) when no node
// holds it; err itself when the pool cannot pull (shared, quota, no Remote) or the
// lookup failed, so that Provision can still send the claim to the source's node.
func (p *Pool) locateSource(ctx context.Context, req *CreateRequest, err error) (Peer, error) {
	if p.remote == nil || p.Shared() || !errors.Is(err, ErrNotFound) || !p.ownsSourceID(req.Source) {
		return Peer{}, err
	}
	peer, lerr := p.remote.Locate(ctx, req.Source)
	switch {
	case lerr == nil:
		return peer, nil
	case errors.Is(lerr, ErrNotFound):
		return Peer{}, nowhere{fmt.Errorf("%s %s: no node holds it: %w", req.Source.Kind, req.Source.ID, lerr)}
	default:
		klog.FromContext(ctx).Error(lerr, "Cannot find which node holds the content source", "source", req.Source.ID)
		return Peer{}, err
	}
}

// ownsSourceID tells whether src is of Berth's ID format and names this pool.
func (p *Pool) ownsSourceID(src *Source) bool {
	var pool string
	switch src.Kind {
	case SourceSnapshot:
		id, err := ParseSnapshotID(src.ID)
		if err != nil {
			return false
		}
		pool = id.Pool
	case SourceVolume:
		id, err := ParseVolumeID(src.ID)
		if err != nil {
			return false
		}
		pool = id.Pool
	}
	return pool == p.cfg.Name
}

// checkFetched refuses what a fetch of src for volume r received when it is
// not of the pool's kind and the volume's access type (and filesystem), or
// larger than the volume.
func (p *Pool) checkFetched(r *Record, got *Fetched, src string) error {
	_, isDir := p.backend.Data()
	switch {
	case got.Tree != isDir:
		return fmt.Errorf("%s is not of pool %s's kind %s: %w", src, p.cfg.Name, p.kind, ErrInvalid)
	case got.AccessType != r.AccessType:
		return fmt.Errorf("%s is a %s volume, not %s: %w", src, got.AccessType, r.AccessType, ErrInvalid)
	case !isDir && got.FSType != r.FSType && !(r.fsTypeOpen && slices.Contains(p.backend.Filesystems(), got.FSType)):
		return fmt.Errorf("%s holds a %q filesystem, not %q: %w", src, got.FSType, r.FSType, ErrInvalid)
	case got.SizeBytes > r.CapacityBytes:
		return fmt.Errorf("%s holds %d bytes, more than the %d requested: %w", src, got.SizeBytes, r.CapacityBytes, ErrOutOfRange)
	}
	return nil
}

// pullDir is where a quota volume's pull is made, inside the entry under tmp/: a
// directory of the volume's project that passes it on, so that every entry the
// pull creates is charged to the volume from the start.
const pullDir = ".pull"

// pull fills a new volume's directory (under tmp/) with its source fetched from
// another node: the kind's empty data directory or sparse image is replaced by
// the source's, which must be of this pool's kind and the volume's access type,
// no larger than its capacity; an image is then grown to the capacity. A quota
// volume's tree is made under a directory of its project (pullDir), then moved
// into place: the quota holds it to its capacity while it is written, and the
// project scan has nothing to repair.
func (p *Pool) pull(ctx context.Context, r *Record, volDir string, progress func(int64)) error {
	name, isDir := p.backend.Data()
	dst := filepath.Join(volDir, name)
	into := dst
	if r.ProjectID != 0 {
		holder := filepath.Join(volDir, pullDir)
		if err := os.Mkdir(holder, 0o700); err != nil {
			return err
		}
		if err := quota.SetProject(holder, r.ProjectID); err != nil {
			return err
		}
		into = filepath.Join(holder, name)
	} else if err := os.Remove(dst); err != nil {
		return err
	}
	got, err := p.remote.Fetch(ctx, r.ContentSource, r.pullFrom, into, r.CapacityBytes, progress)
	if err != nil {
		return fmt.Errorf("pull from node %s: %w", r.pullFrom.Node, err)
	}
	if into != dst {
		// The kind's empty data directory gives way to the pulled one, of the
		// same project; the holder is empty after.
		if err := os.Remove(dst); err != nil {
			return err
		}
		if err := os.Rename(into, dst); err != nil {
			return err
		}
		if err := os.Remove(filepath.Dir(into)); err != nil {
			return err
		}
	}
	if err := p.checkFetched(r, got, r.ContentSource.Kind+" "+r.ContentSource.ID+" on node "+r.pullFrom.Node); err != nil {
		return err
	}
	if !isDir {
		r.FSType = got.FSType // the same, or the source's where none was asked
		if err := os.Truncate(dst, r.CapacityBytes); err != nil {
			return err
		}
	}
	r.Pulled = &Pulled{ID: r.ContentSource.ID, Generation: got.Generation, Since: got.Since}
	// What the pull needed is not the volume's: the index holds what the record says.
	r.pullFrom, r.fsTypeOpen = Peer{}, false
	return syncFS(volDir)
}
