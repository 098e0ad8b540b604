package kubectlberth

import (
	"bytes"
	"fmt"
	"sort"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// PoolFacts is one pool as one driver process reports it (pkg/metrics, collector.go).
type PoolFacts struct {
	Node   string `json:"node"`
	Pool   string `json:"pool"`
	Kind   string `json:"kind"`
	Served bool   `json:"served"`
	// Reason is why the pool is not served (MountFailed, MountLost, CheckFailed).
	Reason string `json:"reason,omitempty"`
	// The filesystem's figures, absent when the driver could not read them.
	CapacityBytes    *int64 `json:"capacityBytes,omitempty"`
	UsedBytes        *int64 `json:"usedBytes,omitempty"`
	FreeBytes        *int64 `json:"freeBytes,omitempty"`
	AllocatedBytes   int64  `json:"allocatedBytes"`
	Volumes          int64  `json:"volumes"`
	Snapshots        int64  `json:"snapshots"`
	DamagedVolumes   int64  `json:"damagedVolumes"`
	DamagedSnapshots int64  `json:"damagedSnapshots"`
	VolumeCopies     int64  `json:"volumeCopiesInProgress"`
	Frozen           int64  `json:"frozenFilesystems"`
	ProjectIDRepairs int64  `json:"projectIDRepairs"`
	TrashEntries     int64  `json:"trashEntries"`
}

// VolumeFacts is one volume as its driver reports it.
type VolumeFacts struct {
	ID            string `json:"volumeID"`
	Pool          string `json:"pool"`
	Namespace     string `json:"namespace,omitempty"`
	Claim         string `json:"claim,omitempty"`
	CapacityBytes int64  `json:"capacityBytes"`
	UsedBytes     *int64 `json:"usedBytes,omitempty"`
	Healthy       bool   `json:"healthy"`
	Ephemeral     bool   `json:"ephemeral,omitempty"`
}

// CopyFacts is a background restore or clone into a volume.
type CopyFacts struct {
	VolumeID   string `json:"volumeID"`
	Pool       string `json:"pool"`
	DoneBytes  int64  `json:"doneBytes"`
	TotalBytes int64  `json:"totalBytes"`
}

// Scrape is what one driver process's /metrics says.
type Scrape struct {
	Pools   []PoolFacts
	Volumes map[string]VolumeFacts // by volume ID
	Copies  map[string]CopyFacts   // by volume ID
}

// ParseMetrics reads the Prometheus text format a driver serves. Families it does
// not know are ignored, so a newer driver's extra series change nothing.
func ParseMetrics(text []byte) (*Scrape, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	s := &Scrape{Volumes: map[string]VolumeFacts{}, Copies: map[string]CopyFacts{}}
	pools := map[[2]string]*PoolFacts{}
	pool := func(l map[string]string) *PoolFacts {
		k := [2]string{l["node"], l["pool"]}
		if pools[k] == nil {
			pools[k] = &PoolFacts{Node: l["node"], Pool: l["pool"], Kind: l["kind"]}
		}
		return pools[k]
	}
	vol := func(l map[string]string, f func(*VolumeFacts)) {
		upsert(s.Volumes, l["volume_id"], VolumeFacts{ID: l["volume_id"], Pool: l["pool"], Namespace: l["namespace"], Claim: l["persistentvolumeclaim"]}, f)
	}
	cp := func(l map[string]string, f func(*CopyFacts)) {
		upsert(s.Copies, l["volume_id"], CopyFacts{VolumeID: l["volume_id"], Pool: l["pool"]}, f)
	}
	for name, fam := range fams {
		for _, m := range fam.GetMetric() {
			l := labels(m)
			v := value(m)
			n := int64(v)
			switch name {
			case "berth_pool_served":
				pool(l).Served = v == 1
			case "berth_pool_unserved":
				if v == 1 {
					pool(l).Reason = l["reason"]
				}
			case "berth_pool_capacity_bytes":
				pool(l).CapacityBytes = &n
			case "berth_pool_used_bytes":
				pool(l).UsedBytes = &n
			case "berth_pool_free_bytes":
				pool(l).FreeBytes = &n
			case "berth_pool_allocated_bytes":
				pool(l).AllocatedBytes = n
			case "berth_pool_volumes":
				pool(l).Volumes = n
			case "berth_pool_snapshots":
				pool(l).Snapshots = n
			case "berth_pool_damaged_entries":
				if l["type"] == "snapshot" {
					pool(l).DamagedSnapshots = n
				} else {
					pool(l).DamagedVolumes = n
				}
			case "berth_pool_volume_copies_in_progress":
				pool(l).VolumeCopies = n
			case "berth_pool_frozen_filesystems":
				pool(l).Frozen = n
			case "berth_pool_project_id_repairs_total":
				pool(l).ProjectIDRepairs = n
			case "berth_pool_trash_entries":
				pool(l).TrashEntries = n
			case "berth_volume_capacity_bytes":
				vol(l, func(x *VolumeFacts) { x.CapacityBytes = n })
			case "berth_volume_used_bytes":
				vol(l, func(x *VolumeFacts) { x.UsedBytes = &n })
			case "berth_volume_healthy":
				vol(l, func(x *VolumeFacts) { x.Healthy = v == 1 })
			case "berth_volume_ephemeral":
				vol(l, func(x *VolumeFacts) { x.Ephemeral = v == 1 })
			case "berth_copy_done_bytes":
				cp(l, func(x *CopyFacts) { x.DoneBytes = n })
			case "berth_copy_total_bytes":
				cp(l, func(x *CopyFacts) { x.TotalBytes = n })
			}
		}
	}
	for _, p := range pools {
		s.Pools = append(s.Pools, *p)
	}
	sort.Slice(s.Pools, func(i, j int) bool { return s.Pools[i].Pool < s.Pools[j].Pool })
	return s, nil
}

// upsert applies f to m[key], which starts as fresh when absent.
func upsert[T any](m map[string]T, key string, fresh T, f func(*T)) {
	v, ok := m[key]
	if !ok {
		v = fresh
	}
	f(&v)
	m[key] = v
}

func labels(m *dto.Metric) map[string]string {
	l := make(map[string]string, len(m.GetLabel()))
	for _, p := range m.GetLabel() {
		l[p.GetName()] = p.GetValue()
	}
	return l
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	return 0
}
