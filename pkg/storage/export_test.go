package storage

import (
	"context"
	"sync"
	"time"
)

// AnchorFile is the name of an image snapshot's anchor (snapshotanchor.go).
const AnchorFile = anchorFile

// PurgeTrash runs one round of the pool's purger, as a kick does, and returns when
// the purge workers it started are over. A pool opened without the engine's Start
// gets a WaitGroup of its own for them.
func (p *Pool) PurgeTrash(ctx context.Context) {
	if p.bg == nil {
		p.bg = new(sync.WaitGroup)
	}
	p.purgeTrash(ctx)
	for {
		p.mu.Lock()
		n := len(p.purging)
		p.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(time.Millisecond)
	}
}
