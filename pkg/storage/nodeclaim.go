package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/berth-csi/berth/pkg/storage/meta"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Single-node claims: a shared pool's volume follows its pod to any node, and with no
// ControllerPublishVolume (attachRequired false) Kubernetes does not keep a
// ReadWriteOnce volume on one node. A node that stages or publishes such a volume
// with a single-node access mode claims it in the volume's directory, which every
// node sees:
//
//   - holder.lock, never removed, is locked (an open file description lock,
//     F_OFD_SETLK) by the node plugin for as long as the node has the volume staged
//     or published. GlusterFS (features/locks), CephFS and NFSv4 make such locks
//     cluster-wide and drop them when the client that took them goes away: the lock
//     is the claim's liveness.
//   - holder.json, written atomically while the lock is held, names the node: the
//     refusal other nodes answer with, and what the node plugin re-takes at start-up
//     (the lock drops with its process; the record and the mounts stay).
//
// A record whose lock nobody holds is another node's claim without its liveness:
// its plugin is restarting (and re-takes the lock at start-up, as it still has the
// volume mounted) or the node is gone. Another node refuses it for the claim grace,
// counted on its own clock from the first time it found it so, then takes it over.
// See docs/design.md, "Single-node access on shared pools".

const (
	holderLock = "holder.lock"
	holderFile = "holder.json"
)

// DefaultClaimGrace is how long a node honours another node's claim whose lock
// nobody holds, before it takes the volume over: longer than a node plugin's
// restart, shorter than Kubernetes takes to move a pod off a lost node.
const DefaultClaimGrace = 2 * time.Minute

// holder is the record of a single-node claim.
type holder struct {
	NodeID string    `json:"nodeID"`
	Mode   string    `json:"mode"`
	Since  time.Time `json:"since"`
}

// claim is a single-node claim this node holds: the locked holder.lock.
type claim struct {
	f *os.File
}

// SingleNode reports a mode that keeps the volume on one node.
func (m AccessMode) SingleNode() bool { return m > ModeUnknown && !m.MultiNode() }

// claim makes sure this node holds the single-node claim of a shared pool's volume
// asked for with mode, taking it when it does not (taken reports that). Multi-node
// modes and node-local pools need none. Another node's live claim is ErrPrecondition
// naming the node; another process of this node holding the lock (a plugin being
// replaced) is ErrBusy. The caller holds the volume's lock.
func (n *Node) claim(ctx context.Context, p *Pool, r *Record, mode AccessMode) (taken bool, err error) {
	if !p.Shared() || !mode.SingleNode() {
		return false, nil
	}
	id := r.ID
	if n.holds(id) {
		return false, nil
	}
	// A dead mount of the pool is mounted again first (its locks died with it).
	if err := p.usable(ctx); err != nil {
		return false, fmt.Errorf("claim volume %s: %w", id, err)
	}
	dir := p.VolumeDir(r.Hash())
	f, locked, err := lockHolder(dir)
	if err != nil {
		return false, fmt.Errorf("claim volume %s: %w", id, err)
	}
	if !locked {
		return false, n.refuseLive(id, mode, dir)
	}
	h, err := readHolder(dir)
	if err != nil {
		unlockHolder(f)
		return false, fmt.Errorf("claim volume %s: %w", id, err)
	}
	if h != nil && h.NodeID != n.nodeID {
		if err := n.orphanedClaim(ctx, id, mode, dir, h); err != nil {
			unlockHolder(f)
			return false, err
		}
	}
	rec := holder{NodeID: n.nodeID, Mode: mode.String(), Since: time.Now().UTC()}
	if h != nil && h.NodeID == n.nodeID && h.Mode == rec.Mode {
		rec.Since = h.Since
	} else if err := writeHolder(dir, rec); err != nil {
		unlockHolder(f)
		return false, fmt.Errorf("claim volume %s: %w", id, err)
	}
	n.claimMu.Lock()
	n.claims[id] = &claim{f: f}
	delete(n.orphans, id)
	n.claimMu.Unlock()
	klog.FromContext(ctx).V(4).Info("Single-node claim taken", "volumeID", id, "nodeID", n.nodeID, "mode", mode.String())
	return true, nil
}

// holds reports whether this node holds the claim of volume id through a mount of
// the pool that still answers: a claim taken through a mount that has died (a killed
// FUSE client) lost its lock with it, and is forgotten so that it is taken again.
func (n *Node) holds(id string) bool {
	n.claimMu.Lock()
	defer n.claimMu.Unlock()
	c, ok := n.claims[id]
	if !ok {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(c.f.Fd()), &st); err != nil && isStale(err) {
		_ = c.f.Close()
		delete(n.claims, id)
		return false
	}
	return true
}

// refuseLive answers a claim whose lock another process holds.
func (n *Node) refuseLive(id string, mode AccessMode, dir string) error {
	n.claimMu.Lock()
	delete(n.orphans, id)
	n.claimMu.Unlock()
	h, err := readHolder(dir)
	switch {
	case err != nil || h == nil:
		// Between another node's lock and its record, or a record that cannot be read.
		return errorf(ErrPrecondition, "volume %s cannot be used with %s on node %s: another node holds it with a single-node access mode",
			id, mode, n.nodeID)
	case h.NodeID == n.nodeID:
		return errorf(ErrBusy, "volume %s is held on this node (%s) by another process, a node plugin being replaced", id, n.nodeID)
	}
	return errorf(ErrPrecondition, "volume %s cannot be used with %s on node %s: it is published with %s on node %s (since %s)",
		id, mode, n.nodeID, h.Mode, h.NodeID, h.Since.Format(time.RFC3339))
}

// orphanedClaim decides on another node's claim whose lock nobody holds: refused
// (ErrPrecondition) until the claim grace has passed since this node first found it
// so, nil (taken over) afterwards. The caller holds the lock.
func (n *Node) orphanedClaim(ctx context.Context, id string, mode AccessMode, dir string, h *holder) error {
	n.claimMu.Lock()
	first, ok := n.orphans[id]
	if !ok || first.node != h.NodeID {
		first = orphan{node: h.NodeID, seen: time.Now()}
		n.orphans[id] = first
	}
	n.claimMu.Unlock()
	if left := n.grace - time.Since(first.seen); left > 0 {
		return errorf(ErrPrecondition, "volume %s cannot be used with %s on node %s: it is published with %s on node %s, whose node plugin "+
			"does not answer for it now (restarting, or the node is gone); node %s takes it over in %s unless node %s takes it back "+
			"(delete %s to hand it over at once, once node %s is known to be down)",
			id, mode, n.nodeID, h.Mode, h.NodeID, n.nodeID, left.Round(time.Second), h.NodeID, filepath.Join(dir, holderFile), h.NodeID)
	}
	klog.FromContext(ctx).Info("Taking over a single-node claim nobody holds", "volumeID", id, "nodeID", n.nodeID,
		"formerNodeID", h.NodeID, "formerMode", h.Mode, "grace", n.grace)
	return nil
}

// orphan is when this node first found another node's claim without its lock.
type orphan struct {
	node string
	seen time.Time // monotonic: the grace is counted on this node's clock
}

// release gives up this node's claim of a volume once nothing of it is staged or
// published here (the caller has unmounted the staging path): the record is removed,
// then the lock released. A claim this node no longer holds in memory (a crash
// between the unmount and here) is released as well when its record names this
// node and nobody holds its lock. A volume deleted meanwhile has nothing to release.
func (n *Node) release(ctx context.Context, p *Pool, id, hash string) error {
	if !p.Shared() || n.publishedHere(id) {
		return nil
	}
	n.claimMu.Lock()
	c := n.claims[id]
	delete(n.claims, id)
	delete(n.orphans, id)
	n.claimMu.Unlock()
	dir := p.VolumeDir(hash)
	var f *os.File
	if c != nil {
		f = c.f
	} else {
		var locked bool
		var err error
		f, locked, err = lockHolder(dir)
		if errors.Is(err, os.ErrNotExist) || err == nil && !locked {
			return nil // a volume deleted meanwhile; a claim of another process
		}
		if err != nil {
			return fmt.Errorf("release volume %s: %w", id, err)
		}
	}
	defer unlockHolder(f)
	h, err := readHolder(dir)
	if err != nil || h == nil || h.NodeID != n.nodeID {
		return err
	}
	if err := os.Remove(filepath.Join(dir, holderFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("release volume %s: %w", id, err)
	}
	if err := meta.SyncDir(dir); err != nil {
		return fmt.Errorf("release volume %s: %w", id, err)
	}
	klog.FromContext(ctx).V(4).Info("Single-node claim released", "volumeID", id, "nodeID", n.nodeID)
	return nil
}

// publishedHere reports whether the table records a publication of volume id under
// this node's kubelet directory.
func (n *Node) publishedHere(id string) bool {
	for _, pub := range n.e.Publications(id) {
		if strings.HasPrefix(pub.TargetPath, n.kubeletDir+"/") {
			return true
		}
	}
	return false
}

// releaseNew gives up a claim taken by an operation that then failed.
func (n *Node) releaseNew(ctx context.Context, p *Pool, r *Record) {
	if err := n.release(ctx, p, r.ID, r.Hash()); err != nil {
		klog.FromContext(ctx).Error(err, "Cannot release the single-node claim of a failed operation", "volumeID", r.ID, "nodeID", n.nodeID)
	}
}

// retakeClaims takes back, at start-up (or when the pool is served again), the
// claims of the volumes this node still has staged or published under its kubelet
// directory and whose record names it: the lock dropped with the process that held
// it, the mounts and the record did not. A lock another process holds is tried
// again for a moment (another node only looks at an orphaned claim under its lock);
// a claim another node has taken over meanwhile is logged as the error it is.
func (n *Node) retakeClaims(ctx context.Context, p *Pool) {
	if !p.Shared() {
		return
	}
	logger := klog.FromContext(ctx)
	for _, id := range n.e.publishedUnder(n.kubeletDir + "/") {
		q, hash, err := n.e.Resolve(id)
		if err != nil || q != p {
			continue
		}
		dir := p.VolumeDir(hash)
		h, err := readHolder(dir)
		if err != nil || h == nil || h.NodeID != n.nodeID {
			if h != nil && h.NodeID != n.nodeID {
				logger.Error(nil, "Volume is mounted on this node but another node now holds it with a single-node access mode: "+
					"two nodes may write it; unpublish it here", "volumeID", id, "nodeID", n.nodeID, "holderNodeID", h.NodeID, "mode", h.Mode)
			}
			continue
		}
		if err := n.retake(ctx, id, dir, h); err != nil {
			logger.Error(err, "Cannot take back the single-node claim of a volume still mounted on this node", "volumeID", id, "nodeID", n.nodeID)
		}
	}
}

// retakeTries bound how long a start-up waits for another node's look at a claim.
const (
	retakeTries = 20
	retakeWait  = 100 * time.Millisecond
)

func (n *Node) retake(ctx context.Context, id, dir string, h *holder) error {
	for range retakeTries {
		f, locked, err := lockHolder(dir)
		if err != nil {
			return err
		}
		if locked {
			now, err := readHolder(dir)
			if err != nil || now == nil || now.NodeID != n.nodeID {
				unlockHolder(f)
				return fmt.Errorf("its record changed while the lock was free: %v", err)
			}
			n.claimMu.Lock()
			n.claims[id] = &claim{f: f}
			n.claimMu.Unlock()
			klog.FromContext(ctx).V(2).Info("Single-node claim taken back", "volumeID", id, "nodeID", n.nodeID, "mode", h.Mode)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(retakeWait):
		}
	}
	return fmt.Errorf("%s stays locked by another process: %w", filepath.Join(dir, holderLock), ErrBusy)
}

// lockHolder opens the volume's holder.lock (creating it) and tries its exclusive
// OFD lock: locked false, with the file closed, when another process holds it.
func lockHolder(dir string) (*os.File, bool, error) {
	if _, err := os.Lstat(dir); err != nil {
		return nil, false, err // never create holder.lock where no volume is
	}
	// Two hosts of a shared pool creating it at once: over FUSE (GlusterFS) the loser
	// of the create gets EEXIST, although it asked no O_EXCL (the kernel looked the
	// name up, found nothing and sent a create); the file is there now, so open again.
	var f *os.File
	var err error
	for range 3 {
		f, err = os.OpenFile(filepath.Join(dir, holderLock), os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if !errors.Is(err, fs.ErrExist) {
			break
		}
	}
	if err != nil {
		return nil, false, err
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK}
	err = unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk)
	if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
		f.Close()
		return nil, false, nil
	}
	if err != nil {
		f.Close()
		return nil, false, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return f, true, nil
}

// unlockHolder releases the lock, then closes the file: over FUSE (GlusterFS) a
// close releases the lock only when the filesystem gets the release, a moment later;
// the explicit unlock is done when it returns, so the next node finds it free.
func unlockHolder(f *os.File) {
	if f == nil {
		return
	}
	lk := unix.Flock_t{Type: unix.F_UNLCK}
	_ = unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk)
	_ = f.Close()
}

// readHolder reads the volume's claim record: nil when there is none. Whether there
// is one is read from a listing of the volume's directory: GlusterFS clients cache a
// file's lookup and content for a second (md-cache, quick-read), so a record another
// node has just removed or replaced can still be read through its name, while a
// listing asks the bricks. The content of a record just replaced may still be the
// one before; it only names a node in an answer.
func readHolder(dir string) (*holder, error) {
	d, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read claim record: %w", err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, fmt.Errorf("read claim record: %w", err)
	}
	if !slices.Contains(names, holderFile) {
		return nil, nil
	}
	data, err := os.ReadFile(filepath.Join(dir, holderFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read claim record: %w", err)
	}
	var h holder
	if err := json.Unmarshal(data, &h); err != nil || h.NodeID == "" {
		return nil, fmt.Errorf("claim record %s is not one Berth writes: %q", filepath.Join(dir, holderFile), truncate(strings.TrimSpace(string(data))))
	}
	return &h, nil
}

func writeHolder(dir string, h holder) error {
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	return meta.WriteFile(dir, holderFile, append(data, '\n'))
}
