package metrics

import (
	"github.com/berth-csi/berth/pkg/orphans"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	orphanVolumes = poolDesc("berth_pool_orphan_volumes",
		"Committed volumes of the pool that no PersistentVolume names (inline ephemeral volumes and volumes committed less than 10 min ago aside), at the last successful orphan scan.")
	orphanScanSuccess = prometheus.NewDesc("berth_orphan_scan_success",
		"1 when the last orphan scan listed the PersistentVolumes; 0 when it failed, berth_pool_orphan_volumes being then the last successful scan's.", []string{"node"}, nil)
	orphanScanLast = prometheus.NewDesc("berth_orphan_scan_last_success_timestamp_seconds",
		"When the last successful orphan scan listed the PersistentVolumes, in seconds since the Unix epoch.", []string{"node"}, nil)
)

// OrphanCollector exports the orphan scan's figures (pkg/orphans), read at scrape
// time from the scanner's memory. Until a scan has run it exports nothing, and the
// pools' figures only once one has succeeded; without a scan (--orphan-scan-interval
// 0) it is not registered at all.
type OrphanCollector struct {
	status func() orphans.Status
	node   string
}

// NewOrphanCollector returns the collector of the scan whose status is given.
func NewOrphanCollector(status func() orphans.Status, node string) *OrphanCollector {
	return &OrphanCollector{status: status, node: node}
}

// Describe implements prometheus.Collector.
func (c *OrphanCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- orphanVolumes
	ch <- orphanScanSuccess
	ch <- orphanScanLast
}

// Collect implements prometheus.Collector.
func (c *OrphanCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.status()
	if !st.Scanned {
		return
	}
	ch <- prometheus.MustNewConstMetric(orphanScanSuccess, prometheus.GaugeValue, b2f(st.OK), c.node)
	if st.LastSuccess.IsZero() {
		return
	}
	ch <- prometheus.MustNewConstMetric(orphanScanLast, prometheus.GaugeValue, float64(st.LastSuccess.UnixNano())/1e9, c.node)
	for _, p := range st.Pools {
		ch <- prometheus.MustNewConstMetric(orphanVolumes, prometheus.GaugeValue, float64(p.Orphans), p.Pool, p.Kind, c.node)
	}
}

// AddOrphanScan exports the figures of the orphan scan whose status is given.
func (m *Metrics) AddOrphanScan(status func() orphans.Status) {
	m.reg.MustRegister(NewOrphanCollector(status, m.node))
}
