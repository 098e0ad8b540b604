package dashrender

import (
	"testing"
	"time"
)

// TestVariables: the dashboard's variables take their saved values as Grafana's
// Prometheus data source writes them; the built-ins follow the window.
func TestVariables(t *testing.T) {
	d, err := parseDashboard([]byte(`{"templating": {"list": [
		{"name": "datasource", "type": "datasource", "query": "prometheus", "current": {}},
		{"name": "node", "type": "query", "includeAll": true, "multi": true, "allValue": ".*", "current": {"value": ["$__all"]}},
		{"name": "pool", "type": "query", "includeAll": true, "multi": true, "current": {"value": ["a.b", "c"]}},
		{"name": "one", "type": "query", "includeAll": true, "current": {"value": "x+y"}},
		{"name": "plain", "type": "textbox", "current": {"value": "x+y"}},
		{"name": "topn", "type": "custom", "query": "10,20,50", "current": {"text": "10", "value": "10"}},
		{"name": "first", "type": "custom", "query": "5, 6"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	o := Options{Start: start, End: start.Add(6 * time.Hour), Step: time.Minute, ScrapeInterval: 30 * time.Second}
	vars, err := d.variables(o)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ expr, want string }{
		{`up{node=~"$node"}`, `up{node=~".*"}`},
		{`up{pool=~"${pool}"}`, `up{pool=~"(a\\.b|c)"}`},
		{`up{x=~"$one"}`, `up{x=~"x\\+y"}`},
		{`up{x="[[plain]]"}`, `up{x="x+y"}`},
		{`topk($topn, up)`, `topk(10, up)`},
		{`topk($first, up)`, `topk(5, up)`},
		{`$datasource`, `prometheus`},
		{`rate(x[$__rate_interval])`, `rate(x[2m])`},
		{`rate(x[$__interval])`, `rate(x[1m])`},
		{`$__interval_ms $__range $__range_s $__range_ms`, `60000 21600s 21600 21600000`},
		{`label_replace(up, "a", "$1", "b", "(.*)") $unknown $nodes`, `label_replace(up, "a", "$1", "b", "(.*)") $unknown $nodes`},
	} {
		if got := interpolate(tc.expr, vars); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.expr, got, tc.want)
		}
	}

	// $__rate_interval: four scrapes at least, a scrape more than the step otherwise.
	for _, tc := range []struct {
		step, scrape time.Duration
		want         string
	}{
		{15 * time.Second, 15 * time.Second, "1m"},
		{5 * time.Minute, 30 * time.Second, "330s"},
		{time.Hour, 30 * time.Second, "3630s"},
		{1500 * time.Millisecond, time.Second, "4s"},
		{400 * time.Millisecond, 200 * time.Millisecond, "800ms"},
	} {
		o.Step, o.ScrapeInterval = tc.step, tc.scrape
		vars, _ := d.variables(o)
		if vars["__rate_interval"] != tc.want {
			t.Errorf("step %s scrape %s: $__rate_interval %s, want %s", tc.step, tc.scrape, vars["__rate_interval"], tc.want)
		}
	}

	o.Vars = map[string]string{"node": "n1", "__rate_interval": "10m"}
	vars, _ = d.variables(o)
	if got := interpolate(`rate(x{node="$node"}[$__rate_interval])`, vars); got != `rate(x{node="n1"}[10m])` {
		t.Errorf("with Vars: %s", got)
	}
}

func TestLegend(t *testing.T) {
	labels := map[string]string{"__name__": "berth_pool_served", "node": "n1", "pool": "default"}
	for _, tc := range []struct{ format, want string }{
		{"{{node}}/{{pool}}", "n1/default"},
		{"{{ node }} {{missing}}x", "n1 x"},
		{"", `berth_pool_served{node="n1", pool="default"}`},
		{"__auto", `berth_pool_served{node="n1", pool="default"}`},
	} {
		if got := legend(tc.format, labels, "expr"); got != tc.want {
			t.Errorf("legend(%q) = %q, want %q", tc.format, got, tc.want)
		}
	}
	if got := legend("", nil, "sum(x)"); got != "sum(x)" {
		t.Errorf("legend of a series without labels %q, want its expression", got)
	}
}
