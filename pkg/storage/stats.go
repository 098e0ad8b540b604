package storage

import (
	"context"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"
)

// Reasons a pool is not served, a small fixed set for monitoring (the error itself
// says more, in /readyz and the logs).
const (
	ReasonMountFailed = "MountFailed" // its filesystem is not mounted and could not be (start-up, retries)
	ReasonMountLost   = "MountLost"   // its mount went away while served (until the next retry)
	ReasonCheckFailed = "CheckFailed" // its filesystem cannot serve its kind (no project quotas...)
)

// reasonFor is reason when err is set, else "".
func reasonFor(err error, reason string) string {
	if err == nil {
		return ""
	}
	return reason
}

// observed is what the node last measured of a volume: NodeGetVolumeStats's usage,
// the volume health checks' verdict.
type observed struct {
	usage     Usage
	haveUsage bool
	problems  int
	haveCheck bool
}

// noteUsage remembers the usage the node measured, for monitoring (VolumeStats).
func (p *Pool) noteUsage(hash string, u Usage) {
	p.observe(hash, func(o *observed) { o.usage, o.haveUsage = u, true })
}

// noteCondition remembers how many problems a health check found.
func (p *Pool) noteCondition(hash string, problems int) {
	p.observe(hash, func(o *observed) { o.problems, o.haveCheck = problems, true })
}

// observe updates what is remembered of a committed volume.
func (p *Pool) observe(hash string, set func(*observed)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.index[hash]; !ok {
		return
	}
	o := p.observed[hash]
	set(&o)
	p.observed[hash] = o
}

// CopyProgress is one content copy running in the background.
type CopyProgress struct {
	VolumeID   string // the volume (or snapshot) being filled
	DoneBytes  int64
	TotalBytes int64 // the source's recorded size, an upper bound; 0 when unknown
}

// PoolStats are a pool's figures for monitoring. They come from memory and a few
// system calls (one statfs, a read of the trash directory): never a walk of a volume.
type PoolStats struct {
	Name, Kind string
	Reason     string // why the pool is not served (Reason* constants); "" when served
	// CapacityBytes is the largest volume the pool could hold (its filesystem's size
	// less the reserve); UsedBytes and FreeBytes are its filesystem's. FSKnown is
	// false when they could not be read (the pool is not served).
	CapacityBytes, UsedBytes, FreeBytes int64
	TotalInodes, FreeInodes             int64 // 0 when the filesystem has no inode count
	FSKnown                             bool
	AllocatedBytes                      int64 // capacities committed and reserved
	Volumes, Snapshots, SnapshotCopies  int
	DamagedVolumes, DamagedSnapshots    int
	TrashEntries                        int
	TrashBytes                          int64 // capacities recorded by the trash's entries
	Copies                              []CopyProgress
	Frozen                              int64 // filesystems frozen for a copy right now
	ProjectResets                       int64 // quota project IDs the scans repaired
}

// Served reports whether the pool is served.
func (s PoolStats) Served() bool { return s.Reason == "" }

// Stats reads the pool's figures for monitoring.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	s := PoolStats{
		Name: p.cfg.Name, Kind: p.kind, Reason: p.healthReason,
		AllocatedBytes: p.allocated, Volumes: len(p.index), DamagedVolumes: len(p.damaged),
		Frozen: p.frozen.Load(), ProjectResets: p.projectResets.Load(),
	}
	if p.healthErr != nil && s.Reason == "" {
		s.Reason = ReasonCheckFailed
	}
	for _, c := range p.copies {
		select {
		case <-c.done:
		default:
			s.Copies = append(s.Copies, CopyProgress{VolumeID: c.rec.ID, DoneBytes: c.copied.Load(), TotalBytes: c.total})
		}
	}
	p.mu.Unlock()
	sort.Slice(s.Copies, func(i, j int) bool { return s.Copies[i].VolumeID < s.Copies[j].VolumeID })
	p.snaps.mu.Lock()
	s.Snapshots, s.SnapshotCopies, s.DamagedSnapshots = len(p.snaps.snaps), len(p.snaps.building), len(p.snaps.damaged)
	p.snaps.mu.Unlock()
	if !s.Served() {
		// A shared pool's dead mount could hang statfs: nothing is read from it.
		return s
	}
	var st unix.Statfs_t
	if err := unix.Statfs(p.cfg.Path, &st); err == nil {
		total := int64(st.Blocks) * st.Bsize
		s.CapacityBytes = max(total-p.cfg.ReservedBytes, 0)
		s.UsedBytes = total - int64(st.Bfree)*st.Bsize
		s.FreeBytes = int64(st.Bavail) * st.Bsize
		s.TotalInodes, s.FreeInodes = int64(st.Files), int64(st.Ffree)
		s.FSKnown = true
	}
	trash := filepath.Join(p.cfg.Path, trashDir)
	if entries, err := os.ReadDir(trash); err == nil {
		s.TrashEntries = len(entries)
		for _, e := range entries {
			if r, err := readRecord(filepath.Join(trash, e.Name())); err == nil {
				s.TrashBytes += r.CapacityBytes
			}
		}
	}
	return s
}

// cheapUsage marks a kind whose Usage costs a few system calls whatever the volume
// holds (a quota read, a stat of an image), so monitoring may call it for every
// volume at every scrape. Other kinds (dir: a walk) report what the node last measured.
type cheapUsage interface{ cheapUsage() }

func (quotaBackend) cheapUsage() {}
func (imageBackend) cheapUsage() {}

// VolumeStats is one committed volume's figures for monitoring.
type VolumeStats struct {
	ID, Pool      string
	Claim         *Claim // nil: not known
	CapacityBytes int64
	// Usage is measured now (kinds with a cheap measure) or is what NodeGetVolumeStats
	// last measured on this node; HaveUsage is false when neither exists.
	Usage     Usage
	HaveUsage bool
	// Healthy is false when the pool is not served, a project scan found a problem,
	// or the last volume health check did.
	Healthy bool
	// Ephemeral: a CSI ephemeral inline volume, which lives as long as its pod and
	// which no PersistentVolume names.
	Ephemeral bool
}

// VolumeStats reads every committed volume's figures for monitoring, in no order.
func (p *Pool) VolumeStats(ctx context.Context) []VolumeStats {
	p.mu.Lock()
	served := p.healthErr == nil
	out := make([]VolumeStats, 0, len(p.index))
	recs := make([]*Record, 0, len(p.index))
	for hash, r := range p.index {
		v := VolumeStats{ID: r.ID, Pool: p.cfg.Name, Claim: r.Claim, CapacityBytes: r.CapacityBytes, Healthy: served, Ephemeral: r.Ephemeral}
		o := p.observed[hash]
		if o.haveUsage {
			v.Usage, v.HaveUsage = o.usage, true
		}
		if o.haveCheck && o.problems > 0 {
			v.Healthy = false
		}
		if _, ok := p.findings[hash]; ok {
			v.Healthy = false
		}
		out = append(out, v)
		recs = append(recs, r)
	}
	if len(p.observed) > len(p.index) {
		// Volumes a shared pool's rescan dropped (deleted by other hosts).
		for hash := range p.observed {
			if _, ok := p.index[hash]; !ok {
				delete(p.observed, hash)
			}
		}
	}
	p.mu.Unlock()
	if _, cheap := p.backend.(cheapUsage); cheap && served {
		for i, r := range recs {
			if u, err := p.backend.Usage(ctx, p, r, p.VolumeDir(r.Hash())); err == nil {
				out[i].Usage, out[i].HaveUsage = u, true
			}
		}
	}
	return out
}

// CreatedVolumeID is the ID a volume named name gets in the pool params name (the
// default pool when they name none); "" when no such pool is configured. For logs.
func (e *Engine) CreatedVolumeID(name string, params map[string]string) string {
	p := e.DefaultPool()
	if n, ok := params[ParamPool]; ok {
		if p = e.byNm[n]; p == nil {
			return ""
		}
	}
	if ValidateName(name) != nil {
		return ""
	}
	return VolumeID(p.Name(), name)
}

// ClaimOf is the claim recorded with a committed volume, from memory. For logs.
func (e *Engine) ClaimOf(id string) (namespace, name string, ok bool) {
	pid, err := ParseVolumeID(id)
	if err != nil {
		return "", "", false
	}
	p := e.byNm[pid.Pool]
	if p == nil {
		return "", "", false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.index[pid.Hash]
	if r == nil || r.Claim == nil {
		return "", "", false
	}
	return r.Claim.Namespace, r.Claim.Name, true
}
