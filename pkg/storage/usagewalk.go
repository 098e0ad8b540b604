package storage

import (
	"context"
	"sync"
	"time"

	"github.com/berth-csi/berth/pkg/storage/safefs"
)

const (
	// usageTTL is how long the figures of a usage walk answer for its volume
	// (NodeGetVolumeStats, a shared volume's fullness) before the next call
	// walks again. kubelet asks every minute by default.
	usageTTL = 30 * time.Second
	// maxUsageWalks bounds the usage walks running at once, across pools: a
	// volume built to be slow to walk delays the stats of others at most
	// until a slot is free, and takes at most this many of the node's CPUs.
	maxUsageWalks = 2
	// usageSweep is the number of remembered volumes above which expired
	// ones are forgotten (then twice as many as are left).
	usageSweep = 64
)

// usageWalks measures directory trees with safefs.Usage for all the pools of an
// engine: figures are served from a walk less than usageTTL old, concurrent
// callers for one directory share one walk, at most maxUsageWalks walks run at
// once, and a walk stops when every caller waiting for it has gone away.
type usageWalks struct {
	slots chan struct{}
	ttl   time.Duration
	walk  func(ctx context.Context, dir string) (bytes, inodes int64, err error)

	mu      sync.Mutex
	byDir   map[string]*usageEntry
	sweepAt int
}

// usageEntry is what is known of one directory.
type usageEntry struct {
	bytes, inodes int64
	at            time.Time // end of the last successful walk; zero when none
	run           *usageRun // the walk in progress, nil when none
}

// usageRun is one walk and the callers waiting for it.
type usageRun struct {
	done          chan struct{}
	waiters       int
	cancel        context.CancelFunc
	bytes, inodes int64
	err           error
}

func newUsageWalks() *usageWalks {
	return &usageWalks{
		slots:   make(chan struct{}, maxUsageWalks),
		ttl:     usageTTL,
		walk:    safefs.Usage,
		byDir:   map[string]*usageEntry{},
		sweepAt: usageSweep,
	}
}

// measure returns the bytes and inodes of the tree at dir, from a recent walk
// or a new one. When ctx ends first, the last figures known are answered if
// there are any, else ctx's error; the walk goes on only while some caller
// still waits for it.
func (w *usageWalks) measure(ctx context.Context, dir string) (bytes, inodes int64, err error) {
	now := time.Now()
	w.mu.Lock()
	e := w.byDir[dir]
	if e != nil && !e.at.IsZero() && now.Sub(e.at) < w.ttl {
		w.mu.Unlock()
		return e.bytes, e.inodes, nil
	}
	if e == nil {
		w.sweep(now)
		e = &usageEntry{}
		w.byDir[dir] = e
	}
	run := e.run
	if run == nil {
		// The walk belongs to its callers, not to the first one: it keeps the
		// first caller's values (its logger) but not its cancellation.
		wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		run = &usageRun{done: make(chan struct{}), cancel: cancel}
		e.run = run
		go w.run(wctx, dir, e, run)
	}
	run.waiters++
	w.mu.Unlock()

	select {
	case <-run.done:
		return run.bytes, run.inodes, run.err
	case <-ctx.Done():
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if run.waiters--; run.waiters == 0 {
		run.cancel()
		if e.run == run {
			e.run = nil // the next caller starts a new walk
		}
	}
	if !e.at.IsZero() {
		return e.bytes, e.inodes, nil
	}
	return 0, 0, ctx.Err()
}

// run walks dir once a slot is free, and records the result in e.
func (w *usageWalks) run(ctx context.Context, dir string, e *usageEntry, run *usageRun) {
	defer run.cancel()
	defer close(run.done)
	select {
	case w.slots <- struct{}{}:
		run.bytes, run.inodes, run.err = w.walk(ctx, dir)
		<-w.slots
	case <-ctx.Done():
		run.err = ctx.Err()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if run.err == nil {
		e.bytes, e.inodes, e.at = run.bytes, run.inodes, time.Now()
	}
	if e.run == run {
		e.run = nil
	}
}

// SetUsageTTL sets how long a usage walk's figures answer for its volume
// (default 30 s); zero or less walks on every call, which still share walks
// and slots. It may be called at any time.
func (e *Engine) SetUsageTTL(d time.Duration) {
	if len(e.pools) == 0 {
		return
	}
	w := e.pools[0].usage
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ttl = d
}

// forget drops what is known of dir, whose volume is gone: a volume made
// again under the same name must not show the old one's figures.
func (w *usageWalks) forget(dir string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if e := w.byDir[dir]; e != nil && e.run == nil {
		delete(w.byDir, dir)
	} else if e != nil {
		e.at = time.Time{}
	}
}

// sweep forgets expired directories once there are many. The caller holds mu.
func (w *usageWalks) sweep(now time.Time) {
	if len(w.byDir) < w.sweepAt {
		return
	}
	for dir, e := range w.byDir {
		if e.run == nil && now.Sub(e.at) >= w.ttl {
			delete(w.byDir, dir)
		}
	}
	w.sweepAt = max(usageSweep, 2*len(w.byDir))
}
