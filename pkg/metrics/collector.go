package metrics

import (
	"cmp"
	"context"
	"slices"

	"github.com/berth-csi/berth/pkg/storage"
	"github.com/prometheus/client_golang/prometheus"
)

// unservedReasons is the fixed set of berth_pool_unserved's reason label.
var unservedReasons = []string{storage.ReasonMountFailed, storage.ReasonMountLost, storage.ReasonCheckFailed}

var (
	poolLabels   = []string{"pool", "kind", "node"}
	volumeLabels = []string{"volume_id", "pool", "namespace", "persistentvolumeclaim"}
	copyLabels   = []string{"volume_id", "pool"}
)

func poolDesc(name, help string, extra ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, append(append([]string{}, poolLabels...), extra...), nil)
}

var (
	poolServed         = poolDesc("berth_pool_served", "1 when the pool is served, 0 when its volumes' calls answer Unavailable.")
	poolUnserved       = poolDesc("berth_pool_unserved", "1 for the reason the pool is not served, 0 for the others.", "reason")
	poolCapacity       = poolDesc("berth_pool_capacity_bytes", "Largest volume the pool could hold: its filesystem's size less the reserve.")
	poolAllocated      = poolDesc("berth_pool_allocated_bytes", "Capacities of the pool's volumes, committed and being created.")
	poolUsed           = poolDesc("berth_pool_used_bytes", "Bytes used on the pool's filesystem.")
	poolFree           = poolDesc("berth_pool_free_bytes", "Bytes available to the driver on the pool's filesystem.")
	poolInodes         = poolDesc("berth_pool_inodes", "Inodes of the pool's filesystem, where it counts them.")
	poolInodesFree     = poolDesc("berth_pool_inodes_free", "Free inodes of the pool's filesystem, where it counts them.")
	poolVolumes        = poolDesc("berth_pool_volumes", "Committed volumes in the pool.")
	poolSnapshots      = poolDesc("berth_pool_snapshots", "Committed snapshots in the pool.")
	poolDamaged        = poolDesc("berth_pool_damaged_entries", "Volume or snapshot directories without a readable record, kept untouched.", "type")
	poolVolumeCopies   = poolDesc("berth_pool_volume_copies_in_progress", "Volumes whose content source is being copied in the background.")
	poolSnapshotCopies = poolDesc("berth_pool_snapshot_copies_in_progress", "Snapshots being copied in the background.")
	poolTrashEntries   = poolDesc("berth_pool_trash_entries", "Deleted volumes and snapshots waiting in the trash to be purged.")
	poolTrashBytes     = poolDesc("berth_pool_trash_bytes", "Capacities recorded by the trash's entries: at most what purging them frees.")
	poolFrozen         = poolDesc("berth_pool_frozen_filesystems", "Staged filesystems frozen right now for a consistent copy.")
	poolProjectResets  = poolDesc("berth_pool_project_id_repairs_total", "Files and directories whose quota project ID the project scans reset since the driver started.")

	copyDone  = prometheus.NewDesc("berth_copy_done_bytes", "Bytes of the content source copied so far into a volume being created.", copyLabels, nil)
	copyTotal = prometheus.NewDesc("berth_copy_total_bytes", "Recorded size of the content source being copied: an upper bound of what is copied.", copyLabels, nil)

	volCapacity   = prometheus.NewDesc("berth_volume_capacity_bytes", "Capacity of the volume.", volumeLabels, nil)
	volUsed       = prometheus.NewDesc("berth_volume_used_bytes", "Bytes the volume holds (quota and image pools: now; other kinds: as NodeGetVolumeStats last measured).", volumeLabels, nil)
	volInodes     = prometheus.NewDesc("berth_volume_inodes", "Inodes the volume may hold, where known.", volumeLabels, nil)
	volInodesUsed = prometheus.NewDesc("berth_volume_inodes_used", "Inodes the volume holds, where known.", volumeLabels, nil)
	volHealthy    = prometheus.NewDesc("berth_volume_healthy", "1 unless the pool is not served, a project scan or the last volume health check found a problem.", volumeLabels, nil)
	volEphemeral  = prometheus.NewDesc("berth_volume_ephemeral", "1 for a CSI ephemeral inline volume (it lives as long as its pod; no PersistentVolume names it); absent for the others.", volumeLabels, nil)
)

// Collector reads the engine's pools and volumes at scrape time, from memory and a
// few system calls per pool: never a walk of a volume.
type Collector struct {
	e    *storage.Engine
	node string
}

// NewCollector returns the collector of an engine serving node.
func NewCollector(e *storage.Engine, node string) *Collector { return &Collector{e: e, node: node} }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolServed, poolUnserved, poolCapacity, poolAllocated, poolUsed, poolFree,
		poolInodes, poolInodesFree, poolVolumes, poolSnapshots, poolDamaged, poolVolumeCopies, poolSnapshotCopies,
		poolTrashEntries, poolTrashBytes, poolFrozen, poolProjectResets, copyDone, copyTotal,
		volCapacity, volUsed, volInodes, volInodesUsed, volHealthy, volEphemeral} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	if !c.e.Ready() {
		return // the pools are not loaded yet: no figure rather than zeros
	}
	for _, p := range c.e.Pools() {
		s := p.Stats()
		c.collectPool(ch, s)
		vols := p.VolumeStats(context.Background())
		// In the order of their label values (namespace, claim, pool, ID), the order
		// the registry sorts each family in: its sort then finds them sorted, in one
		// pass rather than n log n comparisons of label pairs (10,000 volumes: 5
		// families of 10,000).
		slices.SortFunc(vols, func(a, b storage.VolumeStats) int {
			an, ac := claimOf(a)
			bn, bc := claimOf(b)
			return cmp.Or(cmp.Compare(an, bn), cmp.Compare(ac, bc), cmp.Compare(a.Pool, b.Pool), cmp.Compare(a.ID, b.ID))
		})
		for _, v := range vols {
			collectVolume(ch, v)
		}
	}
}

// claimOf is the volume's claim namespace and name ("" when not known).
func claimOf(v storage.VolumeStats) (namespace, name string) {
	if v.Claim == nil {
		return "", ""
	}
	return v.Claim.Namespace, v.Claim.Name
}

func (c *Collector) collectPool(ch chan<- prometheus.Metric, s storage.PoolStats) {
	lv := []string{s.Name, s.Kind, c.node}
	gauge := func(d *prometheus.Desc, v float64, extra ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append(lv[:3:3], extra...)...)
	}
	gauge(poolServed, b2f(s.Served()))
	for _, r := range unservedReasons {
		gauge(poolUnserved, b2f(s.Reason == r), r)
	}
	gauge(poolAllocated, float64(s.AllocatedBytes))
	if s.FSKnown {
		gauge(poolCapacity, float64(s.CapacityBytes))
		gauge(poolUsed, float64(s.UsedBytes))
		gauge(poolFree, float64(s.FreeBytes))
		if s.TotalInodes > 0 {
			gauge(poolInodes, float64(s.TotalInodes))
			gauge(poolInodesFree, float64(s.FreeInodes))
		}
		gauge(poolTrashEntries, float64(s.TrashEntries))
		gauge(poolTrashBytes, float64(s.TrashBytes))
	}
	gauge(poolVolumes, float64(s.Volumes))
	gauge(poolSnapshots, float64(s.Snapshots))
	gauge(poolDamaged, float64(s.DamagedVolumes), "volume")
	gauge(poolDamaged, float64(s.DamagedSnapshots), "snapshot")
	gauge(poolVolumeCopies, float64(len(s.Copies)))
	gauge(poolSnapshotCopies, float64(s.SnapshotCopies))
	gauge(poolFrozen, float64(s.Frozen))
	ch <- prometheus.MustNewConstMetric(poolProjectResets, prometheus.CounterValue, float64(s.ProjectResets), lv...)
	for _, cp := range s.Copies {
		ch <- prometheus.MustNewConstMetric(copyDone, prometheus.GaugeValue, float64(cp.DoneBytes), cp.VolumeID, s.Name)
		ch <- prometheus.MustNewConstMetric(copyTotal, prometheus.GaugeValue, float64(cp.TotalBytes), cp.VolumeID, s.Name)
	}
}

func collectVolume(ch chan<- prometheus.Metric, v storage.VolumeStats) {
	ns, claim := claimOf(v)
	lv := []string{v.ID, v.Pool, ns, claim}
	gauge := func(d *prometheus.Desc, x float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, x, lv...)
	}
	gauge(volCapacity, float64(v.CapacityBytes))
	gauge(volHealthy, b2f(v.Healthy))
	if v.Ephemeral {
		gauge(volEphemeral, 1)
	}
	if !v.HaveUsage {
		return
	}
	gauge(volUsed, float64(v.Usage.UsedBytes))
	if !v.Usage.BytesOnly && v.Usage.TotalInodes > 0 {
		gauge(volInodes, float64(v.Usage.TotalInodes))
		gauge(volInodesUsed, float64(v.Usage.UsedInodes))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
