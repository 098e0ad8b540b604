package storage

import "context"

// PurgeTrash runs one round of the pool's purger, as a kick does, and returns when
// it is over.
func (p *Pool) PurgeTrash(ctx context.Context) { p.purgeTrash(ctx) }
