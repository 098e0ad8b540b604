package metrics

import (
	"github.com/berth-csi/berth/pkg/transfer"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	transferLabels      = []string{"node", "direction", "volume_id", "peer"}
	transfersInProgress = prometheus.NewDesc("berth_transfers_in_progress",
		"Transfers over the channel between nodes running right now, by direction (send: this node's data to another's plugin).", []string{"node", "direction"}, nil)
	transferDone = prometheus.NewDesc("berth_transfer_done_bytes",
		"Data bytes of a running transfer sent so far (over every resumed attempt: what was not sent again is not counted).", transferLabels, nil)
	transferTotal = prometheus.NewDesc("berth_transfer_total_bytes",
		"Data bytes a running transfer will send in all, where known before it ends (images).", transferLabels, nil)
	transferResumes = prometheus.NewDesc("berth_transfer_resumes",
		"Times a running transfer went on from where an interrupted attempt stopped.", transferLabels, nil)
)

// TransferCollector exports the running transfers of a node's transfer server,
// read at scrape time; a transfer's series go when it ends.
type TransferCollector struct {
	list func() []transfer.Status
	node string
}

// Describe implements prometheus.Collector.
func (c *TransferCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{transfersInProgress, transferDone, transferTotal, transferResumes} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *TransferCollector) Collect(ch chan<- prometheus.Metric) {
	count := map[string]int{"send": 0, "receive": 0}
	for _, st := range c.list() {
		dir := "receive"
		if st.Sending {
			dir = "send"
		}
		count[dir]++
		ch <- prometheus.MustNewConstMetric(transferDone, prometheus.GaugeValue, float64(st.Bytes), c.node, dir, st.ID, st.Peer)
		if st.Total > 0 {
			ch <- prometheus.MustNewConstMetric(transferTotal, prometheus.GaugeValue, float64(st.Total), c.node, dir, st.ID, st.Peer)
		}
		ch <- prometheus.MustNewConstMetric(transferResumes, prometheus.GaugeValue, float64(st.Resumes), c.node, dir, st.ID, st.Peer)
	}
	for dir, n := range count {
		ch <- prometheus.MustNewConstMetric(transfersInProgress, prometheus.GaugeValue, float64(n), c.node, dir)
	}
}

// AddTransfers exports the transfers list returns (a transfer.Server's Transfers).
func (m *Metrics) AddTransfers(list func() []transfer.Status) {
	m.reg.MustRegister(&TransferCollector{list: list, node: m.node})
}
