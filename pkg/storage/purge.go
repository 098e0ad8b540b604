package storage

import (
	"context"
	"os"
	"path/filepath"

	"k8s.io/klog/v2"
)

// purgeWorkers bounds the trash entries one pool purges at once. Each entry
// has its own worker, so a huge or deep one (a walk is linear in its entries,
// but a hundred million of them still take a while) delays only itself: the
// other entries are purged by the other workers meanwhile.
const purgeWorkers = 4

func (p *Pool) kickPurge() {
	select {
	case p.purge <- struct{}{}:
	default:
	}
}

// purger starts purge workers for the trash whenever kicked, until ctx ends.
func (p *Pool) purger(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.purge:
		}
		p.purgeTrash(ctx)
	}
}

// purgeTrash starts a worker for every entry of the trash not being purged
// yet, at most purgeWorkers at a time, and returns without waiting for them;
// a worker that ends kicks the purger again if entries were left waiting.
// Purging walks with no-follow semantics and never leaves the trash entry
// (safefs.RemoveTree), and stops when ctx ends.
func (p *Pool) purgeTrash(ctx context.Context) {
	logger := klog.FromContext(ctx).WithValues("pool", p.cfg.Name)
	if err := p.usable(ctx); err != nil {
		logger.V(4).Info("Trash not purged", "err", err.Error())
		return
	}
	trash := filepath.Join(p.cfg.Path, trashDir)
	entries, err := os.ReadDir(trash)
	if err != nil {
		logger.Error(err, "Cannot read trash")
		return
	}
	for _, e := range entries {
		if ctx.Err() != nil {
			return
		}
		name := e.Name()
		p.mu.Lock()
		if p.purging[name] {
			p.mu.Unlock()
			continue
		}
		if len(p.purging) >= purgeWorkers {
			p.purgeMore = true
			p.mu.Unlock()
			return
		}
		p.purging[name] = true
		p.mu.Unlock()
		p.bg.Add(1)
		go func() {
			defer p.bg.Done()
			p.purgeEntry(ctx, logger, trash, name)
			p.mu.Lock()
			delete(p.purging, name)
			more := p.purgeMore
			p.purgeMore = false
			p.mu.Unlock()
			if more {
				p.kickPurge()
			}
		}()
	}
}

// purgeEntry removes the trash entry name, data first and record last.
func (p *Pool) purgeEntry(ctx context.Context, logger klog.Logger, trash, name string) {
	// Every host purges a shared pool's trash: one at a time per entry.
	l, err := p.tryLock("t-" + name)
	if err != nil {
		return
	}
	defer l.unlock()
	rec, _ := readRecord(filepath.Join(trash, name))
	// The data first, the record last: a purge that stops midway (a file it
	// cannot remove, or ctx ending) keeps the record, and with it the quota
	// project ID the remaining data is charged to, taken across restarts.
	if fi, lerr := os.Lstat(filepath.Join(trash, name)); lerr == nil && fi.IsDir() {
		data, _ := p.backend.Data()
		err = p.remove(ctx, filepath.Join(trash, name), data)
	}
	if err == nil {
		err = p.remove(ctx, trash, name)
	}
	if err != nil {
		if ctx.Err() == nil {
			logger.Error(err, "Cannot purge deleted volume", "entry", name)
		}
		return
	}
	if rec != nil {
		p.projects.free(rec.ProjectID)
	}
	logger.V(4).Info("Purged deleted volume", "entry", name)
}
