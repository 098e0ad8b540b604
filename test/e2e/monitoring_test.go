package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/test/e2e/dashrender"
)

// unservedPool is a pool TestMonitoring adds to every node that no node can serve: a
// quota pool on a filesystem without project quotas (CheckFailed), as an operator's
// mistake would make one.
const unservedPool = "unserved-e2e"

// emptyPanels are the dashboard's queries that may return nothing on this cluster
// during TestMonitoring, each with the reason. Every other query must return data.
var emptyPanels = map[string]string{
	"Unhealthy volumes/A": "no volume is unhealthy: the unserved pool holds none",
	"Copy progress/A":     "no restore or clone is being copied",
	"Project ID repairs/A": "no quota pool is served here (this kernel has no quotas: " +
		"the quota pool's check fails), so no project scan runs",
	"Failed calls by method and code/A": "no call failed in the window, unless one happened to",
}

// TestMonitoring runs a real Prometheus, managed by a real prometheus-operator (both
// built from the Go module proxy: test/e2e/prometheus), with the chart's PodMonitor,
// PrometheusRule and dashboard turned on:
//   - the PodMonitor makes Prometheus scrape every node plugin pod, and the orphan scan
//     runs on each;
//   - every alert expression is evaluated without error and every metric it reads has
//     series (but the copy metrics, which exist only while a copy runs);
//   - BerthPoolNotServed fires for a pool that no node can serve, and
//     BerthPoolNearlyFull fires once a node's disk is filled (and clears after);
//   - every dashboard query returns data (but emptyPanels), drawn by test/e2e/dashrender
//     into _output/e2e/dashboard.svg.
func TestMonitoring(t *testing.T) {
	helm := os.Getenv("BERTH_HELM")
	if helm == "" {
		t.Skip("needs BERTH_HELM, the helm binary make e2e uses, to turn the chart's monitoring on")
	}
	installPrometheusStack(t)
	c := setup(t, alone)
	nodes := c.nodes()
	c.withValues(helm, func(values map[string]any) {
		m := mapAt(values, "metrics")
		m["enabled"] = true
		m["podMonitor"] = map[string]any{"enabled": true, "interval": "5s", "scrapeTimeout": "4s"}
		m["prometheusRule"] = map[string]any{"enabled": true, "alerts": map[string]any{
			"poolNearlyFull": map[string]any{"for": "0s"},
			"poolNotServed":  map[string]any{"for": "0s"},
		}}
		m["dashboard"] = map[string]any{"enabled": true}
		values["orphanScan"] = map[string]any{"interval": "1m"}
		pools, _ := values["pools"].([]any)
		values["pools"] = append(pools, map[string]any{"name": unservedPool, "path": "/var/lib/berth/" + unservedPool, "kind": "quota"})
	})
	t.Cleanup(func() {
		for _, n := range nodes { // the pool's directory, made by the driver on each node
			_, _ = c.nodeRun(n, "rm", "-rf", "/var/lib/berth/"+unservedPool)
		}
	})

	// A volume with data on each node, for the volume panels.
	for i, n := range nodes {
		name := fmt.Sprintf("m%d", i)
		c.apply(pvc(name, "berth", "64Mi", "Filesystem") + "---\n" +
			podOnNode(name, n, name, "dd if=/dev/zero of=/data/f bs=1M count=8 && sleep 3600", "Never"))
	}
	for i := range nodes {
		c.waitReady(fmt.Sprintf("m%d", i), 2*time.Minute)
	}

	plugins := strings.Fields(c.kubectlNS(driverNS, "get", "pods", "-l", "app.kubernetes.io/component=node",
		"-o", "jsonpath={.items[*].metadata.name}"))
	if len(plugins) != len(nodes) {
		t.Fatalf("node plugin pods %v, want one per node %v", plugins, nodes)
	}
	c.waitFor("Prometheus scraping every node plugin", 3*time.Minute, func() bool {
		up := map[string]bool{}
		for _, tg := range promTargets(t) {
			if tg.Health == "up" {
				up[tg.Labels["pod"]] = true
			}
		}
		return !slices.ContainsFunc(plugins, func(p string) bool { return !up[p] })
	})
	scraped := time.Now() // the dashboard is drawn from here on
	// One more volume, made now that every plugin is scraped: the latency panels
	// show the rate of the calls' histogram over the drawn window, which has none if
	// all the calls were counted before the plugins' first scrape (a failed CI run
	// at 5169fe4: the plugins, replaced by the upgrade, were first scraped after the
	// volumes above were made). The volumes above stay early, for the volume panels.
	c.apply(pvc("late", "berth", "16Mi", "Filesystem") + "---\n" +
		podOnNode("late", nodes[0], "late", "sleep 3600", "Never"))
	c.waitReady("late", 2*time.Minute)
	for _, n := range nodes {
		// By node: a plugin pod replaced by the release's upgrade may still be
		// scraped, or its last samples still fresh, beside its successor's.
		q := fmt.Sprintf(`max by (node) (berth_pool_served{node=%q,pool="default"}) == 1`, n)
		if _, err := waitQuery(q, 1, time.Minute); err != nil {
			all, _ := tryPromQuery(fmt.Sprintf(`berth_pool_served{node=%q}`, n))
			t.Errorf("no berth_pool_served 1 for node %s's default pool: %v; its series: %v", n, err, all)
		}
	}

	// The orphan scan (a minute apart here) has run on every node: its figures exist.
	c.waitFor("an orphan scan on every node", 3*time.Minute, func() bool {
		s, err := tryPromQuery(`berth_orphan_scan_success == 1`)
		return err == nil && len(s) == len(nodes)
	})
	for _, s := range promQuery(t, `berth_pool_orphan_volumes{pool="default"}`) {
		t.Logf("node %s: %v orphaned volumes in its default pool", s.Metric["node"], s.Value)
	}

	// BerthPoolNotServed: the unserved pool, on every node, with its reason.
	waitAlert(c, "BerthPoolNotServed", map[string]string{"pool": unservedPool}, len(nodes), time.Minute)
	for _, s := range promQuery(t, fmt.Sprintf(`berth_pool_unserved{pool=%q} == 1`, unservedPool)) {
		if s.Metric["reason"] != "CheckFailed" {
			t.Errorf("pool %s on %s not served for %q, want CheckFailed", unservedPool, s.Metric["node"], s.Metric["reason"])
		}
	}

	// BerthPoolNearlyFull: the last node's disk filled but 3% of it, then freed.
	full := nodes[len(nodes)-1]
	if full != thisNode {
		fillDisk(c, full)
		waitAlert(c, "BerthPoolNearlyFull", map[string]string{"node": full, "pool": "default"}, 1, 2*time.Minute)
		if _, err := c.nodeRun(full, "rm", "-f", "/var/lib/berth/e2e-fill"); err != nil {
			t.Fatal(err)
		}
		c.waitFor("BerthPoolNearlyFull to clear", 2*time.Minute, func() bool {
			return len(alerts(t, "BerthPoolNearlyFull", map[string]string{"node": full})) == 0
		})
	} else {
		t.Log("one node only: BerthPoolNearlyFull not made to fire (this machine's disk is not filled)")
	}

	checkRules(t)
	renderDashboard(t, scraped.Add(-10*time.Second))
}

// mapAt is values[key] as a map, made when missing.
func mapAt(values map[string]any, key string) map[string]any {
	m, ok := values[key].(map[string]any)
	if !ok {
		m = map[string]any{}
		values[key] = m
	}
	return m
}

// fillDisk fills node's /var/lib/berth (its own disk) but 3% of it, with a file
// removed at cleanup.
func fillDisk(c *cluster, node string) {
	t := c.t
	t.Helper()
	out, err := c.nodeRun(node, "df", "-B1", "--output=size,avail", "/var/lib/berth")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out) // the header's two words, then the two numbers
	if len(f) != 4 {
		t.Fatalf("df on %s: %q", node, out)
	}
	size, _ := strconv.ParseInt(f[2], 10, 64)
	avail, _ := strconv.ParseInt(f[3], 10, 64)
	fill := avail - size*3/100
	if fill <= 0 {
		t.Fatalf("node %s's disk has %d of %d bytes free: already nearly full", node, avail, size)
	}
	t.Cleanup(func() { _, _ = c.nodeRun(node, "rm", "-f", "/var/lib/berth/e2e-fill") })
	if _, err := c.nodeRun(node, "fallocate", "-l", strconv.FormatInt(fill, 10), "/var/lib/berth/e2e-fill"); err != nil {
		t.Fatal(err)
	}
	t.Logf("node %s: %d of its disk's %d bytes filled, %d free", node, fill, size, avail-fill)
}

// alerts are the firing alerts named name whose labels include want.
func alerts(t *testing.T, name string, want map[string]string) []sample {
	t.Helper()
	sel := []string{fmt.Sprintf(`alertname=%q`, name), `alertstate="firing"`}
	for k, v := range want {
		sel = append(sel, fmt.Sprintf("%s=%q", k, v))
	}
	return promQuery(t, "ALERTS{"+strings.Join(sel, ",")+"}")
}

// waitAlert waits until at least n alerts named name with labels want fire.
func waitAlert(c *cluster, name string, want map[string]string, n int, timeout time.Duration) {
	c.t.Helper()
	start := time.Now()
	c.waitFor(fmt.Sprintf("alert %s %v firing %d times", name, want, n), timeout, func() bool {
		return len(alerts(c.t, name, want)) >= n
	})
	c.t.Logf("alert %s %v firing after %v", name, want, time.Since(start).Round(time.Second))
}

// metricName finds the berth_ series names an expression reads.
var metricName = regexp.MustCompile(`\bberth_[a-z_]+`)

// checkRules reads Berth's rule group back from Prometheus: every alert of the chart
// is loaded, evaluates without error, and every series it reads exists (but the copy
// metrics, which exist only while a copy runs).
func checkRules(t *testing.T) {
	t.Helper()
	var r struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Name      string `json:"name"`
				Query     string `json:"query"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
				State     string `json:"state"`
			} `json:"rules"`
		} `json:"groups"`
	}
	data, err := promGet("/api/v1/rules", url.Values{"type": {"alert"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, g := range r.Groups {
		if g.Name != "berth" {
			continue
		}
		for _, rule := range g.Rules {
			seen++
			if rule.Health != "ok" {
				t.Errorf("alert %s: health %q (%s): %s", rule.Name, rule.Health, rule.LastError, rule.Query)
			}
			for _, m := range slices.Compact(slices.Sorted(slices.Values(metricName.FindAllString(rule.Query, -1)))) {
				if strings.HasPrefix(m, "berth_copy_") {
					continue
				}
				if len(promQuery(t, "count("+m+")")) == 0 {
					t.Errorf("alert %s reads %s, of which Prometheus has no series", rule.Name, m)
				}
			}
			t.Logf("alert %s: %s, %s", rule.Name, rule.Health, rule.State)
		}
	}
	if seen < 8 {
		t.Errorf("Prometheus has %d of Berth's alerts, want the chart's 8 or more", seen)
	}
}

// renderDashboard draws the chart's dashboard from start to now into
// _output/e2e/dashboard.svg (docs/images/dashboard.svg is a copy of one) and fails on
// a query without data, but those of emptyPanels.
func renderDashboard(t *testing.T, start time.Time) {
	t.Helper()
	dash, err := os.ReadFile(filepath.Join("..", "..", "charts", "berth", "dashboards", "berth.json"))
	if err != nil {
		t.Fatal(err)
	}
	q := dashrender.QueryRangeFunc(func(ctx context.Context, query string, start, end time.Time, step time.Duration) ([]dashrender.Series, error) {
		out, err := kubectlBare("get", "--raw", promAPI+"/api/v1/query_range?"+dashrender.QueryRangeParams(query, start, end, step).Encode())
		if err != nil {
			return nil, fmt.Errorf("%v: %s", err, out)
		}
		return dashrender.ParseResponse([]byte(out))
	})
	dir := filepath.Join("..", "..", "_output", "e2e")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "dashboard.svg"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	end := time.Now()
	empty, err := dashrender.Render(context.Background(), dash, q, dashrender.Options{
		Start: start, End: end, Step: 5 * time.Second, ScrapeInterval: 5 * time.Second,
	}, f)
	if err != nil {
		t.Fatalf("rendering the dashboard: %v", err)
	}
	for _, e := range empty {
		if why, ok := emptyPanels[e]; ok {
			t.Logf("dashboard query %s has no data, as expected: %s", e, why)
			continue
		}
		t.Errorf("dashboard query %s returned no data", e)
	}
	t.Logf("dashboard drawn into %s", f.Name())
}
