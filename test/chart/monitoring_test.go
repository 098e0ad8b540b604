package chart

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/pkg/metrics"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"sigs.k8s.io/yaml"
)

// monitoringValues turns the PodMonitor, the PrometheusRule and the dashboard on.
const monitoringValues = `
metrics:
  podMonitor:
    enabled: true
    labels: {release: kube-prometheus-stack}
    interval: 15s
  prometheusRule:
    enabled: true
    labels: {release: kube-prometheus-stack}
  dashboard:
    enabled: true
`

const (
	podMonitorKey = "PodMonitor/berth"
	ruleKey       = "PrometheusRule/berth"
	dashboardKey  = "ConfigMap/berth-dashboard"
)

type labelSelector struct {
	MatchLabels      map[string]string `json:"matchLabels"`
	MatchExpressions []struct {
		Key      string   `json:"key"`
		Operator string   `json:"operator"`
		Values   []string `json:"values"`
	} `json:"matchExpressions"`
}

// matches is the selector's verdict on labels (the operators the chart uses).
func (s labelSelector) matches(t *testing.T, labels map[string]string) bool {
	for k, v := range s.MatchLabels {
		if labels[k] != v {
			return false
		}
	}
	for _, e := range s.MatchExpressions {
		v, ok := labels[e.Key]
		switch e.Operator {
		case "In":
			if !ok || !slices.Contains(e.Values, v) {
				return false
			}
		default:
			t.Fatalf("selector operator %s: not handled by this test", e.Operator)
		}
	}
	return true
}

type podMonitor struct {
	Metadata struct {
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Selector            labelSelector `json:"selector"`
		PodMetricsEndpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Interval string `json:"interval"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

// workload is a DaemonSet's or Deployment's pod template, as far as a PodMonitor sees it.
type workload struct {
	Metadata struct {
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		Template struct {
			Metadata struct {
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
			Spec podSpec `json:"spec"`
		} `json:"template"`
	} `json:"spec"`
}

type alertRule struct {
	Alert       string            `json:"alert"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type ruleGroup struct {
	Name  string      `json:"name"`
	Rules []alertRule `json:"rules"`
}

type ruleGroups struct {
	Groups []ruleGroup `json:"groups"`
}

type prometheusRule struct {
	Metadata struct {
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec ruleGroups `json:"spec"`
}

func unmarshal(t *testing.T, doc []byte, v any) {
	t.Helper()
	if err := yaml.Unmarshal(doc, v); err != nil {
		t.Fatalf("rendered YAML: %v\n%s", err, doc)
	}
}

func TestMonitoringOffByDefault(t *testing.T) {
	docs := renderDocs(t, sharedValues)
	for _, key := range []string{podMonitorKey, ruleKey, dashboardKey} {
		if _, ok := docs[key]; ok {
			t.Errorf("%s rendered with the default values", key)
		}
	}
}

// TestMonitoringNeedsMetrics: a PodMonitor or rules without the metrics port are refused.
func TestMonitoringNeedsMetrics(t *testing.T) {
	root, _ := filepath.Abs("../..")
	bin, kube := helm(t, root)
	for _, obj := range []string{"podMonitor", "prometheusRule"} {
		values := filepath.Join(t.TempDir(), "values.yaml")
		if err := os.WriteFile(values, []byte("metrics: {enabled: false, "+obj+": {enabled: true}}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "template", "berth", filepath.Join(root, "charts", "berth"), "--kube-version", kube, "-f", values).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "needs metrics.enabled") {
			t.Errorf("%s without metrics: %v\n%s", obj, err, out)
		}
	}
}

// TestPodMonitorSelectsDriverPods: the PodMonitor selects the node plugin's pods and,
// when it exists, the controller's, in the release's namespace, on a port that every
// selected pod's driver container names; nothing else of the chart.
func TestPodMonitorSelectsDriverPods(t *testing.T) {
	for _, tc := range []struct {
		name, values string
		want         []string
	}{
		{"node only", "", []string{"DaemonSet/berth-node"}},
		{"with controller", sharedValues, []string{"DaemonSet/berth-node", "Deployment/berth-controller"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			docs := renderDocs(t, tc.values+monitoringValues)
			var pm podMonitor
			unmarshal(t, docs[podMonitorKey], &pm)
			if pm.Metadata.Labels["release"] != "kube-prometheus-stack" || pm.Metadata.Namespace != "kube-system" {
				t.Errorf("PodMonitor labels %v namespace %q", pm.Metadata.Labels, pm.Metadata.Namespace)
			}
			if !slices.Equal(pm.Spec.NamespaceSelector.MatchNames, []string{"kube-system"}) {
				t.Errorf("PodMonitor namespaces %q, want the release's", pm.Spec.NamespaceSelector.MatchNames)
			}
			if len(pm.Spec.PodMetricsEndpoints) != 1 {
				t.Fatalf("PodMonitor endpoints %+v, want one", pm.Spec.PodMetricsEndpoints)
			}
			ep := pm.Spec.PodMetricsEndpoints[0]
			if ep.Port != "metrics" || ep.Path != "/metrics" || ep.Interval != "15s" {
				t.Errorf("PodMonitor endpoint %+v, want port metrics, /metrics every 15s", ep)
			}
			var selected []string
			for key, doc := range docs {
				if !strings.HasPrefix(key, "DaemonSet/") && !strings.HasPrefix(key, "Deployment/") && !strings.HasPrefix(key, "Pod/") {
					continue
				}
				var w workload
				unmarshal(t, doc, &w)
				labels := w.Spec.Template.Metadata.Labels
				if strings.HasPrefix(key, "Pod/") {
					var pod struct {
						Metadata struct {
							Labels map[string]string `json:"labels"`
						} `json:"metadata"`
					}
					unmarshal(t, doc, &pod)
					labels = pod.Metadata.Labels
				}
				if !pm.Spec.Selector.matches(t, labels) {
					continue
				}
				selected = append(selected, key)
				if !slices.ContainsFunc(w.Spec.Template.Spec.Containers, func(c container) bool {
					return slices.ContainsFunc(c.Ports, func(p port) bool { return p.Name == ep.Port })
				}) {
					t.Errorf("%s is selected but has no port named %s", key, ep.Port)
				}
			}
			slices.Sort(selected)
			if !slices.Equal(selected, tc.want) {
				t.Errorf("PodMonitor selects %q, want %q", selected, tc.want)
			}
		})
	}
}

// exported is what the driver's registry exports: each metric's labels, and which
// are histograms.
type exported struct {
	labels     map[string][]string
	histograms map[string]bool
}

var descRE = regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)

// driverMetrics reads the names and labels from a real registry: the engine and
// orphan scan collectors' descriptions (every family, whether or not a series
// exists now) and a gather of the operation metrics after one observed call.
func driverMetrics(t *testing.T) exported {
	t.Helper()
	x := exported{labels: map[string][]string{}, histograms: map[string]bool{}}
	ch := make(chan *prometheus.Desc, 100)
	metrics.NewCollector(nil, "n1").Describe(ch)
	metrics.NewOrphanCollector(nil, "n1").Describe(ch)
	close(ch)
	for d := range ch {
		m := descRE.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("cannot read %s", d)
		}
		x.labels[m[1]] = strings.Split(m[2], ",")
	}
	e := testengine.Start(t, storage.Config{Pools: []storage.PoolConfig{{Name: "local", Path: filepath.Join(t.TempDir(), "local"), Kind: storage.KindDir}}})
	m := metrics.New(e, "n1")
	m.Observe("/csi.v1.Controller/CreateVolume", codes.OK, time.Millisecond)
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		var labels []string
		for _, l := range f.GetMetric()[0].GetLabel() {
			labels = append(labels, l.GetName())
		}
		x.labels[f.GetName()] = labels
		x.histograms[f.GetName()] = f.GetType().String() == "HISTOGRAM"
	}
	for _, want := range []string{"berth_operations_total", "berth_pool_served", "berth_copy_done_bytes", "berth_volume_used_bytes", "berth_pool_orphan_volumes"} {
		if _, ok := x.labels[want]; !ok {
			t.Fatalf("registry lacks %s: reading it is broken", want)
		}
	}
	return x
}

// targetLabels are what the PodMonitor's scrape adds to every series (namespace
// dropped: chart's relabelings).
var targetLabels = []string{"pod", "container", "endpoint", "instance", "job"}

var (
	metricRE   = regexp.MustCompile(`\bberth_[a-z_]+`)
	selectorRE = regexp.MustCompile(`\b(berth_[a-z_]+)\{([^}]*)\}`)
	matcherRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"`)
	groupingRE = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	legendRE   = regexp.MustCompile(`\{\{\s*(?:\$labels\.)?([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)
)

// base is the family a series name belongs to: itself, or a histogram's.
func (x exported) base(name string) (string, bool) {
	if _, ok := x.labels[name]; ok {
		return name, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if b, ok := strings.CutSuffix(name, suffix); ok && x.histograms[b] {
			return b, true
		}
	}
	return "", false
}

// checkExpr fails the test where expr names a series the driver does not export, a
// label its series do not carry (in a selector, a grouping or the given templates'
// {{label}}), or has unbalanced brackets or quotes. It returns the metric names used.
func (x exported) checkExpr(t *testing.T, where, expr string, templates ...string) []string {
	t.Helper()
	if err := balanced(expr); err != nil {
		t.Errorf("%s: %v: %s", where, err, expr)
	}
	names := metricRE.FindAllString(expr, -1)
	if len(names) == 0 {
		t.Errorf("%s: no berth_ metric in %s", where, expr)
	}
	have := map[string]bool{}
	for _, l := range targetLabels {
		have[l] = true
	}
	for _, n := range names {
		b, ok := x.base(n)
		if !ok {
			t.Errorf("%s: %s is not a metric the driver exports: %s", where, n, expr)
			continue
		}
		for _, l := range x.labels[b] {
			have[l] = true
		}
		if x.histograms[b] && strings.HasSuffix(n, "_bucket") {
			have["le"] = true
		}
	}
	for _, m := range selectorRE.FindAllStringSubmatch(expr, -1) {
		b, ok := x.base(m[1])
		if !ok {
			continue
		}
		own := append(slices.Clone(x.labels[b]), targetLabels...)
		for _, lm := range matcherRE.FindAllStringSubmatch(m[2], -1) {
			if !slices.Contains(own, lm[1]) {
				t.Errorf("%s: %s has no label %s: %s", where, m[1], lm[1], expr)
			}
		}
	}
	var used []string
	for _, g := range groupingRE.FindAllStringSubmatch(expr, -1) {
		used = append(used, strings.Split(g[1], ",")...)
	}
	for _, tmpl := range templates {
		for _, m := range legendRE.FindAllStringSubmatch(tmpl, -1) {
			used = append(used, m[1])
		}
		for _, n := range metricRE.FindAllString(tmpl, -1) {
			if _, ok := x.base(n); !ok {
				t.Errorf("%s: its text names %s, which the driver does not export", where, n)
			}
		}
	}
	for _, l := range used {
		if l = strings.TrimSpace(l); l != "" && !have[l] {
			t.Errorf("%s: label %s is on none of its series: %s", where, l, expr)
		}
	}
	return names
}

// balanced checks brackets and double quotes, the syntax a typo most often breaks
// (promtool, when given, parses the whole of it: TestPromtoolCheckRules).
func balanced(expr string) error {
	var stack []rune
	pairs := map[rune]rune{')': '(', ']': '[', '}': '{'}
	inQuote := false
	for _, r := range expr {
		switch {
		case r == '"':
			inQuote = !inQuote
		case inQuote:
		case r == '(' || r == '[' || r == '{':
			stack = append(stack, r)
		case pairs[r] != 0:
			if len(stack) == 0 || stack[len(stack)-1] != pairs[r] {
				return fmt.Errorf("unbalanced %q", r)
			}
			stack = stack[:len(stack)-1]
		}
	}
	if inQuote || len(stack) > 0 {
		return fmt.Errorf("unclosed %q or quote", stack)
	}
	return nil
}

// wantAlerts is every alert the chart defines.
var wantAlerts = []string{
	"BerthPoolNearlyFull", "BerthPoolNotServed", "BerthVolumeNearlyFull", "BerthCopyStuck",
	"BerthDamagedRecords", "BerthFilesystemFrozen", "BerthProjectIDRepairs",
	"BerthOrphanedVolumes", "BerthOrphanScanFailing", "BerthOperationErrors",
}

func renderRules(t *testing.T, values string) prometheusRule {
	t.Helper()
	var pr prometheusRule
	unmarshal(t, renderDocs(t, values)[ruleKey], &pr)
	return pr
}

// TestPrometheusRuleAlerts: every alert is there, says what to do, has a severity,
// and its expression uses only what the driver exports.
func TestPrometheusRuleAlerts(t *testing.T) {
	x := driverMetrics(t)
	pr := renderRules(t, monitoringValues)
	if pr.Metadata.Labels["release"] != "kube-prometheus-stack" {
		t.Errorf("PrometheusRule labels %v lack the configured ones", pr.Metadata.Labels)
	}
	var names []string
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			names = append(names, r.Alert)
			x.checkExpr(t, r.Alert, r.Expr, r.Annotations["summary"], r.Annotations["description"])
			if r.Annotations["summary"] == "" || len(r.Annotations["description"]) < 80 || r.Labels["severity"] == "" {
				t.Errorf("%s: summary %q, description %q, severity %q: want all three, a description that says what to do",
					r.Alert, r.Annotations["summary"], r.Annotations["description"], r.Labels["severity"])
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("%s: for %q: %v", r.Alert, r.For, err)
				}
			}
		}
	}
	if !slices.Equal(names, wantAlerts) {
		t.Errorf("alerts %q, want %q", names, wantAlerts)
	}
}

// TestPrometheusRuleValues: thresholds and durations come from the values; an alert
// can be turned off alone.
func TestPrometheusRuleValues(t *testing.T) {
	pr := renderRules(t, `
metrics:
  prometheusRule:
    enabled: true
    alerts:
      poolNearlyFull: {freeRatio: 0.2, for: 30m}
      operationErrors: {ratio: 0.5, window: 10m, ignoreCodes: [OK]}
      copyStuck: {enabled: false}
      orphanedVolumes: {severity: info, for: 2h}
`)
	rules := map[string]alertRule{}
	for _, r := range pr.Spec.Groups[0].Rules {
		rules[r.Alert] = r
	}
	if r := rules["BerthPoolNearlyFull"]; !strings.HasSuffix(r.Expr, "< 0.2") || r.For != "30m" {
		t.Errorf("BerthPoolNearlyFull: expr %q for %q, want < 0.2 for 30m", r.Expr, r.For)
	}
	if r := rules["BerthOperationErrors"]; !strings.Contains(r.Expr, `code!~"OK"}[10m]`) || !strings.HasSuffix(r.Expr, "> 0.5") || r.For != "15m" {
		t.Errorf("BerthOperationErrors: expr %q for %q", r.Expr, r.For)
	}
	if r := rules["BerthOrphanedVolumes"]; r.Expr != "berth_pool_orphan_volumes > 0" || r.For != "2h" || r.Labels["severity"] != "info" {
		t.Errorf("BerthOrphanedVolumes: expr %q for %q labels %v, want > 0 for 2h, severity info", r.Expr, r.For, r.Labels)
	}
	if _, ok := rules["BerthCopyStuck"]; ok || len(rules) != len(wantAlerts)-1 {
		t.Errorf("alerts %d with copyStuck disabled, want all but BerthCopyStuck", len(rules))
	}
}

type dashboard struct {
	UID        string `json:"uid"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []dashboardPanel `json:"panels"`
}

type dashboardPanel struct {
	Title   string `json:"title"`
	Type    string `json:"type"`
	Targets []struct {
		RefID        string `json:"refId"`
		Expr         string `json:"expr"`
		LegendFormat string `json:"legendFormat"`
	} `json:"targets"`
}

// dashboardOf renders the chart with the dashboard on and returns its ConfigMap's
// labels and the dashboard.
func dashboardOf(t *testing.T, values string) (map[string]string, dashboard) {
	t.Helper()
	var cm struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
		Data map[string]string `json:"data"`
	}
	unmarshal(t, renderDocs(t, values)[dashboardKey], &cm)
	var d dashboard
	if err := json.Unmarshal([]byte(cm.Data["berth.json"]), &d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	return cm.Metadata.Labels, d
}

// grafanaVars stands for the dashboard's variables in its queries.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$topn", "10", "$node", ".*", "$pool", ".*")

// TestDashboard: the ConfigMap carries the sidecar's label and valid JSON whose every
// query uses only what the driver exports, with panels for each concern.
func TestDashboard(t *testing.T) {
	x := driverMetrics(t)
	labels, d := dashboardOf(t, monitoringValues)
	if labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap labels %v lack grafana_dashboard: \"1\"", labels)
	}
	if d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("dashboard uid %q with %d panels", d.UID, len(d.Panels))
	}
	used := map[string]bool{}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, n := range x.checkExpr(t, p.Title+"/"+tg.RefID, grafanaVars.Replace(tg.Expr), tg.LegendFormat) {
				used[n] = true
			}
		}
	}
	for _, v := range d.Templating.List {
		if q, ok := v.Query.(map[string]any); ok {
			x.checkExpr(t, "variable "+v.Name, fmt.Sprint(q["query"]))
		}
	}
	for _, want := range []string{
		"berth_pool_capacity_bytes", "berth_pool_used_bytes", "berth_pool_free_bytes", "berth_pool_served", "berth_pool_unserved",
		"berth_volume_used_bytes", "berth_volume_healthy", "berth_operations_total", "berth_operation_duration_seconds_bucket",
		"berth_pool_volume_copies_in_progress", "berth_copy_done_bytes", "berth_pool_trash_bytes",
		"berth_pool_damaged_entries", "berth_pool_frozen_filesystems", "berth_pool_project_id_repairs_total",
		"berth_pool_orphan_volumes", "berth_orphan_scan_last_success_timestamp_seconds",
	} {
		if !used[want] {
			t.Errorf("no panel shows %s", want)
		}
	}
	// Helm merges maps with the defaults: null takes the default label away.
	if labels, _ := dashboardOf(t, "metrics: {dashboard: {enabled: true, labels: {grafana_dashboard: null, dashboards: berth}}}\n"); labels["dashboards"] != "berth" || labels["grafana_dashboard"] != "" {
		t.Errorf("dashboard ConfigMap labels %v, want dashboards: berth instead of the default", labels)
	}
}

// TestPromtoolCheckRules runs promtool check rules on the rendered PrometheusRule's
// groups and on the dashboard's queries (as recording rules, variables replaced), so
// that both parse as PromQL. promtool is built by `make metrics-lint`, which sets
// BERTH_PROMTOOL; without it the test skips.
func TestPromtoolCheckRules(t *testing.T) {
	promtool := os.Getenv("BERTH_PROMTOOL")
	if promtool == "" {
		t.Skip("BERTH_PROMTOOL not set: run make metrics-lint")
	}
	pr := renderRules(t, monitoringValues)
	_, d := dashboardOf(t, monitoringValues)
	queries := ruleGroups{Groups: []ruleGroup{{Name: "berth-dashboard"}}}
	for i, p := range d.Panels {
		for _, tg := range p.Targets {
			queries.Groups[0].Rules = append(queries.Groups[0].Rules, alertRule{
				Record: fmt.Sprintf("berth_dashboard:panel%d:%s", i, strings.ToLower(tg.RefID)),
				Expr:   grafanaVars.Replace(tg.Expr),
			})
		}
	}
	dir := t.TempDir()
	var files []string
	for name, groups := range map[string]ruleGroups{"alerts.yaml": pr.Spec, "dashboard.yaml": queries} {
		data, err := yaml.Marshal(groups)
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(dir, name)
		if err := os.WriteFile(file, data, 0o600); err != nil {
			t.Fatal(err)
		}
		files = append(files, file)
	}
	out, err := exec.Command(promtool, append([]string{"check", "rules"}, files...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	t.Logf("promtool check rules: %s", out)
}
