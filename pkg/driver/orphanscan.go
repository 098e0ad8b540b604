package driver

import (
	"github.com/berth-csi/berth/pkg/orphans"
	"github.com/berth-csi/berth/pkg/storage"
)

// orphanPools reads the engine's pools for the orphan scan: each served pool's
// committed volumes (Pool.Records: from memory, after a rescan of a shared pool's
// disk, as ListVolumes does). Volumes being created or copied into are not in the
// index yet; snapshots are not volumes.
func orphanPools(e *storage.Engine) []orphans.Pool {
	out := make([]orphans.Pool, 0, len(e.Pools()))
	for _, p := range e.Pools() {
		recs := p.Records()
		op := orphans.Pool{Name: p.Name(), Kind: p.Kind(), Served: p.Health() == nil}
		if op.Served {
			op.Volumes = make([]orphans.Committed, 0, len(recs))
			for _, r := range recs {
				c := orphans.Committed{ID: r.ID, Ephemeral: r.Ephemeral, CreatedAt: r.CreatedAt}
				if r.Claim != nil {
					c.ClaimNamespace, c.ClaimName = r.Claim.Namespace, r.Claim.Name
				}
				op.Volumes = append(op.Volumes, c)
			}
		}
		out = append(out, op)
	}
	return out
}
