// Package metrics exports Berth's Prometheus metrics: the pools' and volumes'
// figures, read from the engine at scrape time (collector.go), the orphan scan's
// (orphans.go), and the CSI calls' counts and latencies, observed by the gRPC
// interceptor (pkg/server).
package metrics

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path"
	"strconv"
	"time"

	"github.com/berth-csi/berth/pkg/healthz"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/codes"
	"k8s.io/klog/v2"
)

// ScrapeTimeout bounds one scrape: a scrape still running then answers 503.
const ScrapeTimeout = 10 * time.Second

// operationBuckets suit storage calls: from a 1 ms lookup to a 5 min copy.
var operationBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}

// Metrics is the driver's registry.
type Metrics struct {
	reg        *prometheus.Registry
	node       string
	operations *prometheus.CounterVec
	durations  *prometheus.HistogramVec
}

// New builds the registry for an engine serving node: the engine's collector, the
// operation metrics, and the Go runtime's and the process's own.
func New(e *storage.Engine, node string) *Metrics {
	m := &Metrics{
		reg:  prometheus.NewRegistry(),
		node: node,
		operations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_operations_total",
			Help: "CSI calls served, by method and gRPC status code.",
		}, []string{"method", "code"}),
		durations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "berth_operation_duration_seconds",
			Help:    "Time taken to serve CSI calls, by method and gRPC status code.",
			Buckets: operationBuckets,
		}, []string{"method", "code"}),
	}
	m.reg.MustRegister(m.operations, m.durations, NewCollector(e, node),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is the registry the handler serves.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Observe counts one CSI call of fullMethod (/csi.v1.Controller/CreateVolume) that
// ended with code after d. It is what the interceptor is given (server.Observer).
func (m *Metrics) Observe(fullMethod string, code codes.Code, d time.Duration) {
	method, c := path.Base(fullMethod), code.String()
	m.operations.WithLabelValues(method, c).Inc()
	m.durations.WithLabelValues(method, c).Observe(d.Seconds())
}

// Handler serves the registry in Prometheus's text format, one scrape at a time
// at most twice over, each bounded by ScrapeTimeout.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		Timeout:             ScrapeTimeout,
		MaxRequestsInFlight: 2,
		ErrorHandling:       promhttp.ContinueOnError,
	})
}

// CheckAddress validates a --metrics-address: host:port with an explicit host (an IP
// address or a name; 0.0.0.0 or [::] to listen everywhere, but only when asked) and
// a port of 1-65535 (0: a free port, for tests).
func CheckAddress(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: must be host:port: %w", addr, err)
	}
	if host == "" {
		return fmt.Errorf("%q: the host is required (the node's address; 0.0.0.0 listens on every interface)", addr)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: port must be 0-65535", addr)
	}
	return nil
}

// Listen opens the metrics address.
func Listen(addr string) (net.Listener, error) {
	if err := CheckAddress(addr); err != nil {
		return nil, fmt.Errorf("metrics address %w", err)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics address: %w", err)
	}
	return lis, nil
}

// Serve serves GET /metrics on lis until ctx ends, then shuts down within a few
// seconds. Anything else is 404.
func (m *Metrics) Serve(ctx context.Context, lis net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	klog.FromContext(ctx).Info("Serving metrics", "address", lis.Addr().String())
	return healthz.ServeHTTP(ctx, lis, mux, ScrapeTimeout+5*time.Second)
}
