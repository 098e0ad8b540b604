package storage

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"
)

// copyWait is how long a CreateVolume waits for a background copy before it answers
// ErrInProgress (at most half of what is left of the caller's deadline): a small
// restore or clone still completes in one call.
const copyWait = 5 * time.Second

// volumeCopy is a volume whose content source is copied in the background: the
// build (volume.go) runs on the engine's context, not the caller's, so it survives
// the caller's timeout and its retries find it. It holds the volume's capacity
// reservation, and in shared pools its lock, until it commits or rolls back.
type volumeCopy struct {
	rec     *Record // the record it commits (a copy: the build fills in its own)
	cancel  context.CancelFunc
	done    chan struct{}
	err     error // set before done closes; nil: committed
	copied  atomic.Int64
	total   int64 // the source's recorded size: an upper bound of what is copied
	started time.Time
}

// inProgress is the answer to a request while the copy runs.
func (c *volumeCopy) inProgress() error {
	if c.rec.pullFrom.Node != "" {
		return errorf(ErrInProgress, "volume %s is being created: pulling %s %s from node %s in the background, %d bytes received in %s; retry",
			c.rec.ID, c.rec.ContentSource.Kind, c.rec.ContentSource.ID, c.rec.pullFrom.Node, c.copied.Load(), time.Since(c.started).Round(time.Second))
	}
	return errorf(ErrInProgress, "volume %s is being created: copying %s %s in the background, %d bytes copied in %s; retry",
		c.rec.ID, c.rec.ContentSource.Kind, c.rec.ContentSource.ID, c.copied.Load(), time.Since(c.started).Round(time.Second))
}

// boundedWait is how long to wait for background work on behalf of a caller: d, or
// half of what is left before ctx's deadline when that is shorter, so the caller
// hears why before it gives up.
func boundedWait(ctx context.Context, d time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		d = min(d, time.Until(dl)/2)
	}
	return max(d, 0)
}

// ended waits for done, a background job's end, for copyWait at most (less when
// ctx ends sooner, see boundedWait): whether the job ended.
func ended(ctx context.Context, done <-chan struct{}) bool {
	t := time.NewTimer(boundedWait(ctx, copyWait))
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// copyInBackground builds volume r, already reserved (size bytes) and locked (l),
// on the engine's context. It returns the committed volume when the build ends
// within copyWait, else ErrInProgress.
func (p *Pool) copyInBackground(ctx context.Context, r *Record, size int64, l *fileLock) (*Record, error) {
	hash := r.Hash()
	// The copy outlives the request but not the engine: Start's context ends it.
	bctx, cancel := context.WithCancel(klog.NewContext(p.bgCtx, klog.FromContext(ctx)))
	c := &volumeCopy{rec: r.Clone(), cancel: cancel, done: make(chan struct{}), started: time.Now()}
	if src, err := p.sourceOf(r.ContentSource); err == nil {
		c.total = src.size
	}
	p.mu.Lock()
	p.copies[hash] = c
	p.mu.Unlock()
	p.bg.Add(1)
	go func() {
		defer p.bg.Done()
		defer close(c.done)
		defer cancel()
		defer l.unlock()
		logger := klog.FromContext(bctx)
		if err := p.build(bctx, r, hash, c.copied.Store); err != nil {
			p.release(size)
			c.err = fmt.Errorf("create volume %s: %w", r.ID, err)
			logger.Error(err, "Volume copy failed", "volumeID", r.ID, "source", r.ContentSource.ID)
			return
		}
		p.commit(hash, r, size)
		p.mu.Lock()
		delete(p.copies, hash)
		p.mu.Unlock()
		logger.V(4).Info("Volume committed", "volumeID", r.ID, "pool", p.cfg.Name,
			"copiedBytes", c.copied.Load(), "duration", time.Since(c.started))
	}()
	klog.FromContext(ctx).V(4).Info("Volume copy started in the background", "volumeID", r.ID, "source", r.ContentSource.ID)
	if !ended(ctx, c.done) {
		return nil, c.inProgress()
	}
	if c.err != nil {
		p.forgetCopy(hash, c)
		return nil, c.err
	}
	return r.Clone(), nil
}

// copyAnswer answers a create request for a volume whose copy runs or ran in the
// background: ErrExists for other parameters, ErrInProgress while it runs, its
// error once (then it is forgotten, and a retry starts over). Nil when there is no
// such copy, or it committed: the volume is then in the index.
func (p *Pool) copyAnswer(hash string, req *CreateRequest) error {
	p.mu.Lock()
	c := p.copies[hash]
	p.mu.Unlock()
	if c == nil {
		return nil
	}
	if !req.matches(c.rec) {
		return fmt.Errorf("volume %q (%s) is being created with different capacity, parameters or source: %w", req.Name, c.rec.ID, ErrExists)
	}
	select {
	case <-c.done:
		p.forgetCopy(hash, c)
		return c.err
	default:
		return c.inProgress()
	}
}

// cancelCopy stops the background copy of the volume with this hash, if one runs,
// and waits (bounded) for its rollback. ErrInProgress when the rollback outlasts the
// wait: the caller retries.
func (p *Pool) cancelCopy(ctx context.Context, hash string) error {
	p.mu.Lock()
	c := p.copies[hash]
	p.mu.Unlock()
	if c == nil {
		return nil
	}
	c.cancel()
	if !ended(ctx, c.done) {
		return errorf(ErrInProgress, "volume %s: its copy is cancelled and still being rolled back; retry", c.rec.ID)
	}
	p.forgetCopy(hash, c)
	klog.FromContext(ctx).V(4).Info("Volume copy cancelled", "volumeID", c.rec.ID, "copiedBytes", c.copied.Load())
	return nil
}

// forgetCopy drops c, once ended, from the copies in progress.
func (p *Pool) forgetCopy(hash string, c *volumeCopy) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.copies[hash] == c {
		delete(p.copies, hash)
	}
}

// copyingFrom reports whether a volume is being copied from the content source of
// this kind and ID (which may not be deleted meanwhile), and which volume.
func (p *Pool) copyingFrom(kind, id string) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.copies {
		if src := c.rec.ContentSource; src != nil && src.Kind == kind && src.ID == id {
			select {
			case <-c.done:
			default:
				return c.rec.ID, true
			}
		}
	}
	return "", false
}
