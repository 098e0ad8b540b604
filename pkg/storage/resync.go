package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/berth-csi/berth/pkg/storage/meta"
	"github.com/berth-csi/berth/pkg/storage/quota"
	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// AttrResyncFrom is the volume attribute (CSI volume context) of a volume moved
// to this node (`kubectl berth move`): the ID of the volume it was cloned from,
// whose changes since the clone NodeStageVolume brings over first (Resync).
const AttrResyncFrom = "berth.csi.io/resync-from"

// The entries a resync makes in the volume's directory, beside its data:
// resyncStaging is the delta pull's staging directory, resyncHolder holds a full
// pull until it is exchanged with the data. An interrupted resync leaves them to
// the next attempt, which removes them first.
const (
	resyncStaging = ".resync.transfer"
	resyncHolder  = ".resync"
)

// removeResyncLeftovers removes what a resync interrupted by a restart left in
// a volume's directory (node-local pools: no resync runs at start-up). Its
// record says whether it completed: if not, the next stage resyncs again.
func removeResyncLeftovers(ctx context.Context, volDir string) {
	for _, n := range []string{resyncStaging, resyncHolder} {
		if err := safefs.RemoveTree(volDir, n); err != nil {
			klog.FromContext(ctx).Error(err, "Cannot remove what an interrupted resync left", "path", filepath.Join(volDir, n))
		}
	}
}

// resyncJob is a resync running in the background: it holds the volume's lock
// until it ends.
type resyncJob struct {
	volumeID, source, node string
	done                   chan struct{}
	cancel                 context.CancelFunc
	err                    error // set before done closes
	received               atomic.Int64
	started                time.Time
}

func (j *resyncJob) inProgress() error {
	return errorf(ErrInProgress, "resyncing volume %s from %s on node %s: %d bytes received in %s; retry",
		j.volumeID, j.source, j.node, j.received.Load(), time.Since(j.started).Round(time.Second))
}

// Resync brings the volume volumeID, a node-local copy of the volume sourceID
// that another node holds (the first phase of a move: a cross-node clone), up to
// date with it, receiving only what changed since the copy was made (a delta
// pull: trees by ctime, images by chunk hashes; docs/design.md, "Resync"). It is
// done once per source and generation: a volume already resynced from it is left
// as it is (the pod has used it since). The work runs in the background, holding
// the volume's lock: until it ends the answer is ErrInProgress with its
// progress, then its error once, or nil. ErrPrecondition when the volume's
// record says it was not pulled from sourceID, or it is published.
func (e *Engine) Resync(ctx context.Context, volumeID, sourceID string) error {
	p, hash, err := e.Resolve(volumeID)
	if err != nil {
		return err
	}
	return p.resync(ctx, hash, sourceID, len(e.Publications(volumeID)) > 0)
}

func (p *Pool) resync(ctx context.Context, hash, sourceID string, published bool) error {
	p.mu.Lock()
	j := p.resyncs[hash]
	p.mu.Unlock()
	if j != nil {
		select {
		case <-j.done:
			p.forgetResync(hash, j)
			if j.err != nil {
				return j.err
			}
			// Done: the record says so, and the checks below find nothing to do.
		default:
			return j.inProgress()
		}
	}
	l, r, err := p.lockRecord(ctx, "resync", hash)
	if err != nil {
		return err
	}
	unlock := true
	defer func() {
		if unlock {
			l.unlock()
		}
	}()
	switch {
	case r.Pulled == nil:
		return errorf(ErrPrecondition, "volume %s cannot be resynced from %s: its record says it was not pulled from another node", r.ID, sourceID)
	case r.Pulled.ID != sourceID:
		return errorf(ErrPrecondition, "volume %s cannot be resynced from %s: its record says it was pulled from %s", r.ID, sourceID, r.Pulled.ID)
	case r.resyncedFrom(sourceID):
		return nil
	case published:
		return errorf(ErrPrecondition, "volume %s cannot be resynced from %s: it is published on this node", r.ID, sourceID)
	case p.remote == nil || p.Shared():
		return errorf(ErrPrecondition, "volume %s cannot be resynced from %s: pool %s does not reach other nodes", r.ID, sourceID, p.cfg.Name)
	}
	src := &Source{Kind: SourceVolume, ID: sourceID}
	if cs := r.ContentSource; cs != nil && cs.ID == sourceID {
		src.Kind = cs.Kind // a restore's snapshot may be resynced from as well
	}
	peer, err := p.remote.Locate(ctx, src)
	switch {
	case errors.Is(err, ErrNotFound):
		return errorf(ErrPrecondition, "volume %s cannot be resynced from %s: no node holds it (%v)", r.ID, sourceID, err)
	case err != nil:
		return errorf(ErrNotReady, "volume %s: cannot find which node holds %s: %v", r.ID, sourceID, err)
	}
	bctx, cancel := context.WithCancel(klog.NewContext(p.bgCtx, klog.FromContext(ctx)))
	j = &resyncJob{volumeID: r.ID, source: sourceID, node: peer.Node, done: make(chan struct{}), cancel: cancel, started: time.Now()}
	p.mu.Lock()
	p.resyncs[hash] = j
	p.mu.Unlock()
	unlock = false
	p.bg.Add(1)
	go func() {
		defer p.bg.Done()
		defer close(j.done)
		defer cancel()
		defer l.unlock()
		logger := klog.FromContext(bctx)
		got, err := p.resyncData(bctx, r, hash, src, peer, j.received.Store)
		if err == nil {
			err = p.recordResync(r, hash, got)
		}
		if errors.Is(err, ErrNotFound) {
			// The source went away meanwhile: not this volume's absence.
			err = errorf(ErrPrecondition, "%v", err)
		}
		if err != nil {
			j.err = fmt.Errorf("resync volume %s from %s on node %s: %w", r.ID, sourceID, peer.Node, err)
			logger.Error(err, "Volume resync failed", "volumeID", r.ID, "source", sourceID, "nodeID", peer.Node)
			return
		}
		logger.V(2).Info("Volume resynced", "volumeID", r.ID, "source", sourceID, "nodeID", peer.Node,
			"delta", got.Delta, "bytes", got.Bytes, "skippedBytes", got.Skipped, "duration", time.Since(j.started).Round(time.Millisecond))
	}()
	klog.FromContext(ctx).V(4).Info("Volume resync started in the background", "volumeID", r.ID, "source", sourceID, "nodeID", peer.Node)
	if !ended(ctx, j.done) {
		return j.inProgress()
	}
	p.forgetResync(hash, j)
	return j.err
}

// resyncing refuses (ErrBusy) an operation on a volume whose resync runs: in
// node-local pools the handlers' try-locks end with the request, and the
// resync outlives it.
func (p *Pool) resyncing(hash string) error {
	p.mu.Lock()
	j := p.resyncs[hash]
	p.mu.Unlock()
	if j == nil {
		return nil
	}
	select {
	case <-j.done:
		return nil
	default:
		return errorf(ErrBusy, "volume %s is being resynced from %s", j.volumeID, j.source)
	}
}

// cancelResync stops the resync of the volume with this hash, if one runs, and
// waits (bounded) for it to end; ErrInProgress when it outlasts the wait.
func (p *Pool) cancelResync(ctx context.Context, hash string) error {
	p.mu.Lock()
	j := p.resyncs[hash]
	p.mu.Unlock()
	if j == nil {
		return nil
	}
	j.cancel()
	if !ended(ctx, j.done) {
		return errorf(ErrInProgress, "volume %s: its resync is cancelled and still stopping; retry", j.volumeID)
	}
	p.forgetResync(hash, j)
	return nil
}

func (p *Pool) forgetResync(hash string, j *resyncJob) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.resyncs[hash] == j {
		delete(p.resyncs, hash)
	}
}

// resyncData brings the volume's data up to date with src: a delta against
// it when the Remote can and the record knows when the copy was made, else (or
// when the data proves not to be a copy) a full pull exchanged with the data.
// New entries of a quota volume are charged to its project from the start (the
// staging directories are of its project, which they pass on). An image is
// given the volume's capacity again.
func (p *Pool) resyncData(ctx context.Context, r *Record, hash string, src *Source, peer Peer, progress func(int64)) (*Fetched, error) {
	volDir := p.VolumeDir(hash)
	name, isDir := p.backend.Data()
	dst := filepath.Join(volDir, name)
	var got *Fetched
	if dr, ok := p.remote.(DeltaRemote); ok && !r.Pulled.Since.IsZero() {
		staging := filepath.Join(volDir, resyncStaging)
		if err := p.projectDir(r, staging); err != nil {
			return nil, err
		}
		var err error
		got, err = dr.FetchDelta(ctx, src, peer, dst, staging, *r.Pulled, r.CapacityBytes, progress)
		switch {
		case errors.Is(err, ErrNotBase):
			klog.FromContext(ctx).V(2).Info("Volume resync pulls in full: its data is not a copy of the source",
				"volumeID", r.ID, "source", src.ID, "err", err)
			if err := safefs.RemoveTree(volDir, resyncStaging); err != nil {
				return nil, err
			}
			got = nil
		case err != nil:
			return nil, err
		}
	}
	if got == nil {
		var err error
		if got, err = p.pullExchange(ctx, r, volDir, src, peer, progress); err != nil {
			return nil, err
		}
	}
	if err := p.checkFetched(r, got, src.Kind+" "+src.ID+" on node "+peer.Node); err != nil {
		return nil, err
	}
	if !isDir {
		if err := os.Truncate(dst, r.CapacityBytes); err != nil {
			return nil, err
		}
	}
	return got, syncFS(volDir)
}

// projectDir makes dir (or finds it) and, for a quota volume, gives it the
// volume's project, passed on to what is made in it.
func (p *Pool) projectDir(r *Record, dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if r.ProjectID == 0 {
		return nil
	}
	return quota.SetProject(dir, r.ProjectID)
}

// pullExchange fetches src in full beside the volume's data (resyncHolder),
// exchanges it with the data at once, and removes the old data.
func (p *Pool) pullExchange(ctx context.Context, r *Record, volDir string, src *Source, peer Peer, progress func(int64)) (*Fetched, error) {
	name, _ := p.backend.Data()
	if err := safefs.RemoveTree(volDir, resyncHolder); err != nil {
		return nil, err
	}
	holder := filepath.Join(volDir, resyncHolder)
	if err := p.projectDir(r, holder); err != nil {
		return nil, err
	}
	got, err := p.remote.Fetch(ctx, src, peer, filepath.Join(holder, name), r.CapacityBytes, progress)
	if err != nil {
		return nil, err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(holder, name), unix.AT_FDCWD, filepath.Join(volDir, name), unix.RENAME_EXCHANGE); err != nil {
		return nil, fmt.Errorf("exchange %s with its update: %w", filepath.Join(volDir, name), err)
	}
	if err := meta.SyncDir(volDir); err != nil {
		return nil, err
	}
	if err := safefs.RemoveTree(volDir, resyncHolder); err != nil {
		return nil, err
	}
	return got, nil
}

// recordResync records the resync in the volume's record (and a source of
// another generation as the one it was pulled from).
func (p *Pool) recordResync(r *Record, hash string, got *Fetched) error {
	now := &Pulled{ID: r.Pulled.ID, Generation: got.Generation, Since: got.Since}
	updated := r.Clone()
	updated.Resynced = now
	if got.Generation != r.Pulled.Generation {
		c := *now
		updated.Pulled = &c
	}
	data, err := encodeRecord(updated)
	if err == nil {
		err = meta.WriteFile(p.VolumeDir(hash), recordFile, data)
	}
	if err != nil {
		return fmt.Errorf("record resync of %s: %w", r.ID, p.noSpace(stepRecord, err))
	}
	p.commit(hash, updated, 0)
	return nil
}

// resyncedFrom: the volume was pulled from sourceID and has been resynced from it
// since (the pull's generation): a resync would find nothing to do.
func (r *Record) resyncedFrom(sourceID string) bool {
	return r.Pulled != nil && r.Pulled.ID == sourceID &&
		r.Resynced != nil && r.Resynced.ID == sourceID && r.Resynced.Generation == r.Pulled.Generation
}
