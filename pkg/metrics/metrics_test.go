package metrics_test

import (
	"context"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/pkg/metrics"
	"github.com/berth-csi/berth/pkg/orphans"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
)

func TestCheckAddress(t *testing.T) {
	tests := []struct {
		addr string
		ok   bool
	}{
		{"10.0.0.5:9810", true},
		{"127.0.0.1:0", true},
		{"[::1]:9810", true},
		{"[10.0.0.5]:9810", true}, // the chart brackets the pod IP, v4 or v6
		{"0.0.0.0:9810", true},    // every interface, asked for explicitly
		{":9810", false},          // every interface by omission: refused
		{"10.0.0.5", false},
		{"10.0.0.5:http", false},
		{"10.0.0.5:70000", false},
		{"", false},
	}
	for _, tc := range tests {
		if err := metrics.CheckAddress(tc.addr); (err == nil) != tc.ok {
			t.Errorf("CheckAddress(%q) = %v, want ok=%v", tc.addr, err, tc.ok)
		}
	}
}

// TestListenBracketedIPv4: the chart's [$(POD_IP)]:port listens on an IPv4 pod IP.
func TestListenBracketedIPv4(t *testing.T) {
	lis, err := metrics.Listen("[127.0.0.1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	if !strings.HasPrefix(lis.Addr().String(), "127.0.0.1:") {
		t.Errorf("listening on %s, want 127.0.0.1", lis.Addr())
	}
}

// newEngine starts an engine on a dir pool with n volumes (half of them with a
// claim) until the test ends.
func newEngine(t *testing.T, n int) *storage.Engine {
	t.Helper()
	e := testengine.Start(t, storage.Config{Pools: []storage.PoolConfig{{Name: "local", Path: filepath.Join(t.TempDir(), "local"), Kind: storage.KindDir}}})
	ctx := context.Background()
	for i := range n {
		req := storage.CreateRequest{Name: "pvc-" + string(rune('a'+i)), RequiredBytes: 1 << 20, AccessType: storage.AccessMount}
		if i%2 == 0 {
			req.Claim = &storage.Claim{Namespace: "ns", Name: "c" + string(rune('a'+i))}
		}
		if _, err := e.DefaultPool().Create(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// scrapeText is one real scrape of the handler.
func scrapeText(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// addOrphanScan exports the figures of a successful orphan scan: 2 orphans in pool
// local.
func addOrphanScan(m *metrics.Metrics) {
	m.AddOrphanScan(func() orphans.Status {
		return orphans.Status{Scanned: true, OK: true, LastSuccess: time.Unix(1772366400, 500e6),
			Pools: []orphans.PoolCount{{Pool: "local", Kind: "dir", Orphans: 2}}}
	})
}

// TestMetricsLint: every metric passes the Prometheus linter (the one promtool check
// metrics runs): names, units, _total on counters, help texts.
func TestMetricsLint(t *testing.T) {
	m := metrics.New(newEngine(t, 4), "n1")
	m.Observe("/csi.v1.Controller/CreateVolume", codes.OK, 3*time.Millisecond)
	m.Observe("/csi.v1.Controller/CreateVolume", codes.ResourceExhausted, time.Millisecond)
	addOrphanScan(m)
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	body := scrapeText(t, m)
	for _, want := range []string{
		`berth_operations_total{code="OK",method="CreateVolume"} 1`,
		`berth_operation_duration_seconds_bucket{code="OK",method="CreateVolume",le="0.005"} 1`,
		`berth_operation_duration_seconds_bucket{code="OK",method="CreateVolume",le="0.0025"} 0`,
		`berth_pool_volumes{kind="dir",node="n1",pool="local"} 4`,
		`berth_pool_allocated_bytes{kind="dir",node="n1",pool="local"} 4.194304e+06`,
		`berth_pool_served{kind="dir",node="n1",pool="local"} 1`,
		`namespace="ns",persistentvolumeclaim="ca",pool="local",volume_id="` + storage.VolumeID("local", "pvc-a") + `"} 1.048576e+06`,
		`process_resident_memory_bytes `,
		`berth_pool_orphan_volumes{kind="dir",node="n1",pool="local"} 2`,
		`berth_orphan_scan_success{node="n1"} 1`,
		`berth_orphan_scan_last_success_timestamp_seconds{node="n1"} 1.7723664005e+09`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
}

// TestPromtoolCheckMetrics runs promtool check metrics on a real scrape. promtool is
// built by `make metrics-lint`, which sets BERTH_PROMTOOL; without it the test skips
// (TestMetricsLint runs the same linter in-process).
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool := os.Getenv("BERTH_PROMTOOL")
	if promtool == "" {
		t.Skip("BERTH_PROMTOOL not set: run make metrics-lint")
	}
	m := metrics.New(newEngine(t, 4), "n1")
	m.Observe("/csi.v1.Node/NodePublishVolume", codes.OK, 20*time.Millisecond)
	addOrphanScan(m)
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(scrapeText(t, m))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
	t.Logf("promtool check metrics: ok %s", out)
}

// TestEphemeralVolumeMarked: a CSI ephemeral inline volume carries
// berth_volume_ephemeral 1 (kubectl berth doctor tells it from an orphan so); a
// provisioned volume has no such series.
func TestEphemeralVolumeMarked(t *testing.T) {
	e := newEngine(t, 1)
	req := storage.CreateRequest{Name: storage.EphemeralName("csi-0123"), RequiredBytes: 1 << 20, AccessType: storage.AccessMount, Ephemeral: true}
	r, err := e.DefaultPool().Create(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	body := scrapeText(t, metrics.New(e, "n1"))
	want := `berth_volume_ephemeral{namespace="",persistentvolumeclaim="",pool="local",volume_id="` + r.ID + `"} 1`
	if !strings.Contains(body, want) {
		t.Errorf("scrape lacks %s", want)
	}
	if n := strings.Count(body, "\nberth_volume_ephemeral{"); n != 1 {
		t.Errorf("%d berth_volume_ephemeral series, want 1 (the ephemeral volume's alone)", n)
	}
}

// TestOrphanScanSeries: the orphan scan's series follow its status: none while the
// scan is off or has not run, the success alone until a scan succeeds, and a failed
// scan's stale figures kept beside success 0.
func TestOrphanScanSeries(t *testing.T) {
	last := time.Unix(1772366400, 0)
	pools := []orphans.PoolCount{{Pool: "local", Kind: "dir", Orphans: 3}}
	const (
		volumes = `berth_pool_orphan_volumes{kind="dir",node="n1",pool="local"} 3`
		stamp   = `berth_orphan_scan_last_success_timestamp_seconds{node="n1"} 1.7723664e+09`
	)
	for _, tc := range []struct {
		name    string
		status  *orphans.Status // nil: the scan is off
		want    []string
		wantNot []string
	}{
		{name: "scan off", wantNot: []string{"berth_orphan_", "berth_pool_orphan_volumes"}},
		{name: "not scanned yet", status: &orphans.Status{}, wantNot: []string{"berth_orphan_", "berth_pool_orphan_volumes"}},
		{name: "first scan failed", status: &orphans.Status{Scanned: true},
			want: []string{`berth_orphan_scan_success{node="n1"} 0`}, wantNot: []string{"berth_orphan_scan_last_success", "berth_pool_orphan_volumes"}},
		{name: "scan succeeded", status: &orphans.Status{Scanned: true, OK: true, LastSuccess: last, Pools: pools},
			want: []string{`berth_orphan_scan_success{node="n1"} 1`, stamp, volumes}},
		{name: "later scan failed: stale figures", status: &orphans.Status{Scanned: true, LastSuccess: last, Pools: pools},
			want: []string{`berth_orphan_scan_success{node="n1"} 0`, stamp, volumes}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := metrics.New(newEngine(t, 0), "n1")
			if tc.status != nil {
				m.AddOrphanScan(func() orphans.Status { return *tc.status })
			}
			body := scrapeText(t, m)
			for _, w := range tc.want {
				if !strings.Contains(body, "\n"+w+"\n") {
					t.Errorf("scrape lacks %s", w)
				}
			}
			for _, w := range tc.wantNot {
				if strings.Contains(body, "\n"+w) {
					t.Errorf("scrape has %s", w)
				}
			}
		})
	}
}
