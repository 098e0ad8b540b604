package storage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/klog/v2"
)

// DefaultPoolRetry is how often a pool that cannot be served is tried again.
const DefaultPoolRetry = 30 * time.Second

// SetPoolRetry sets how often unserved pools are tried again; call it before Start.
func (e *Engine) SetPoolRetry(d time.Duration) { e.retry = d }

func (e *Engine) poolRetry() time.Duration {
	if e.retry <= 0 {
		return DefaultPoolRetry
	}
	return e.retry
}

// setHealth records whether the pool can be served (nil: it can) and, when it
// cannot, the reason from the fixed set (stats.go).
func (p *Pool) setHealth(err error, reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.healthErr = err
	p.healthReason = reasonFor(err, reason)
}

// UnservedPools lists why each pool that cannot be served is not, in
// configuration order; nil when every pool is served.
func (e *Engine) UnservedPools() error {
	var errs []error
	for _, p := range e.pools {
		if err := p.Health(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// usable is the check at the start of every operation that reads or writes a shared
// pool: the pool is served, and its path is still the live mount it is served from
// (sharedBackend.Live, one statx). When it is not (the mount died, or was unmounted
// and the path shows the node's own disk beneath), a pool with a source is mounted
// again, once; a pool still not live is marked unserved, so /readyz, GetCapacity and
// volume health report it and retryPools serves it again once it can, and the
// operation is ErrNotReady before anything touched the path. Other kinds have no
// mount to check: nil.
func (p *Pool) usable(ctx context.Context) error {
	m, ok := p.backend.(poolMounter)
	if !ok {
		return nil
	}
	if err := p.Health(); err != nil {
		return p.notServed(err)
	}
	err := m.Live()
	if err == nil {
		return nil
	}
	if p.cfg.Source != "" {
		if err = m.Mount(ctx); err == nil {
			return nil
		}
	}
	p.unserve(ctx, err)
	return p.notServed(err)
}

// unserve marks a served shared pool unserved because its mount is not what it
// should be, and says so once.
func (p *Pool) unserve(ctx context.Context, why error) {
	p.mu.Lock()
	first := p.healthErr == nil
	if first {
		p.healthErr = why
		p.healthReason = ReasonMountLost
	}
	p.mu.Unlock()
	if first {
		klog.FromContext(ctx).Error(why, "Shared pool not served: its mount is gone; its calls answer Unavailable until it is mounted again", "pool", p.cfg.Name, "path", p.cfg.Path)
	}
}

// notServed is what an operation on a pool that is not served answers.
func (p *Pool) notServed(why error) error {
	return fmt.Errorf("pool %s is not served: %w: %w", p.cfg.Name, why, ErrNotReady)
}

// ctx is the context of work that has none of its own (lookups by ID): the engine's,
// with its logger, until it stops.
func (p *Pool) ctx() context.Context {
	if p.bgCtx != nil {
		return p.bgCtx
	}
	return context.Background()
}

// retryPools tries the unserved pools again every poolRetry until ctx ends: a shared
// pool whose filesystem could not be mounted is mounted and loaded, a pool whose
// filesystem failed its kind's check is checked again. One pool's trouble never
// stops the others: each is served on its own as soon as it can be. The served
// shared pools are checked on the same beat, so a mount that dies while no call
// comes is remounted, or the pool reported unserved, all the same.
func (e *Engine) retryPools(ctx context.Context) {
	t := time.NewTicker(e.poolRetry())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, p := range e.pools {
			if ctx.Err() != nil {
				return
			}
			if p.Health() == nil {
				// A mount that died while no call came is remounted, or the pool
				// reported unserved, as a call would; the full check (the source of
				// the mount, from the mount table) runs here, off the calls' path.
				if m, ok := p.backend.(poolMounter); ok {
					if err := m.Mount(ctx); err != nil {
						p.unserve(ctx, err)
					}
				}
				continue
			}
			logger := klog.FromContext(ctx).WithValues("pool", p.Name())
			if err := p.reopen(ctx); err != nil {
				logger.Error(err, "Cannot reconcile pool")
				continue
			}
			if err := p.Health(); err != nil {
				logger.V(2).Info("Pool still cannot be served", "err", err.Error())
				continue
			}
			logger.Info("Pool served again")
			if e.onServed != nil {
				e.onServed(ctx, p)
			}
		}
	}
}

// reopen runs a pool's start-up again: all of it for a pool the engine mounts or
// finds mounted (a shared pool is read again from its filesystem: other hosts went
// on meanwhile) and when mounting failed before the layout was loaded, else only its
// kind's check.
func (p *Pool) reopen(ctx context.Context) error {
	p.mu.Lock()
	loaded := p.loaded
	p.mu.Unlock()
	if _, mounts := p.backend.(poolMounter); mounts || !loaded {
		return p.open(ctx)
	}
	p.setHealth(p.backend.Check(ctx, p), ReasonCheckFailed)
	return nil
}
