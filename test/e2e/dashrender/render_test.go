package dashrender

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"maps"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	t0     = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	window = Options{Start: t0, End: t0.Add(6 * time.Hour), Step: time.Minute}
)

// call is one query the fake was asked.
type call struct {
	query      string
	start, end time.Time
	step       time.Duration
}

// fake answers every query with two series per node whose values follow from the
// query's text, except the queries for which none returns true.
type fake struct {
	mu    sync.Mutex
	calls []call
	none  func(query string) bool
}

func (f *fake) QueryRange(_ context.Context, query string, start, end time.Time, step time.Duration) ([]Series, error) {
	f.mu.Lock()
	f.calls = append(f.calls, call{query, start, end, step})
	f.mu.Unlock()
	if f.none != nil && f.none(query) {
		return nil, nil
	}
	h := fnv.New32a()
	h.Write([]byte(query))
	base := float64(h.Sum32()%1000) + 1
	switch {
	case strings.Contains(query, "histogram_quantile") || strings.Contains(query, "/"):
		base /= 1000 // ratios, seconds
	case strings.Contains(query, "bytes"):
		base *= 1 << 26 // GiB
	case strings.Contains(query, "rate("):
		base /= 100
	}
	var out []Series
	// Returned in reverse order: the rendering sorts them.
	for i, node := range []string{"node-b", "node-a"} {
		s := Series{Labels: labelsOf(query, node)}
		for k, t := 0, start; !t.After(end); k, t = k+1, t.Add(step) {
			s.Samples = append(s.Samples, Sample{T: t, V: base * float64(i+1) * (1 + 0.5*math.Sin(float64(k)/10))})
		}
		out = append(out, s)
	}
	return out, nil
}

// labelsOf gives a series the labels the driver's series of that kind carry (see
// docs/operations.md, "Metrics"), and the scrape target's.
func labelsOf(query, node string) map[string]string {
	target := map[string]string{"pod": "berth-node-" + node, "container": "berth", "endpoint": "metrics", "job": "kube-system/berth", "instance": "10.0.0.1:9811"}
	switch {
	case strings.Contains(query, "sum by (method, code)"):
		code := map[string]string{"node-a": "OK", "node-b": "Aborted"}[node]
		return map[string]string{"method": "CreateVolume", "code": code}
	case strings.Contains(query, "sum by (method, le)"):
		return map[string]string{"method": map[string]string{"node-a": "CreateVolume", "node-b": "NodePublishVolume"}[node]}
	case strings.Contains(query, "berth_volume_") || strings.Contains(query, "berth_copy_"):
		maps.Copy(target, map[string]string{"volume_id": "pvc-" + node, "pool": "default", "namespace": "app", "persistentvolumeclaim": "data-" + node})
	default:
		maps.Copy(target, map[string]string{"node": node, "pool": "default", "kind": "dir", "type": "volume", "reason": "MountFailed"})
	}
	return target
}

func readDashboard(t *testing.T) []byte {
	t.Helper()
	dash, err := os.ReadFile("../../../charts/berth/dashboards/berth.json")
	if err != nil {
		t.Fatal(err)
	}
	return dash
}

func render(t *testing.T, dash []byte, q RangeQuerier, o Options) (string, []string) {
	t.Helper()
	var buf bytes.Buffer
	empty, err := Render(context.Background(), dash, q, o, &buf)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	checkXML(t, buf.Bytes())
	return buf.String(), empty
}

// checkXML fails unless svg is well-formed XML whose root is an svg element.
func checkXML(t *testing.T, svg []byte) {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(svg))
	root := ""
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && root == "" {
			root = se.Name.Space + " " + se.Name.Local
		}
	}
	if root != "http://www.w3.org/2000/svg svg" {
		t.Fatalf("root element %q, want svg in the SVG namespace", root)
	}
}

// TestRenderBerthDashboard: every panel of Berth's dashboard is drawn, every query
// run with its variables substituted, and the same results draw the same file.
func TestRenderBerthDashboard(t *testing.T) {
	dash := readDashboard(t)
	f := &fake{}
	svg, empty := render(t, dash, f, window)
	if len(empty) != 0 {
		t.Errorf("empty queries %q, want none", empty)
	}
	var d struct {
		Panels []struct {
			Title   string
			Type    string
			Targets []struct{ Instant bool }
		}
	}
	if err := json.Unmarshal(dash, &d); err != nil {
		t.Fatal(err)
	}
	queries := 0
	for _, p := range d.Panels {
		if !strings.Contains(svg, ">"+esc(p.Title)+"</text>") {
			t.Errorf("panel %q (%s) is not in the SVG", p.Title, p.Type)
		}
		queries += len(p.Targets)
	}
	if len(f.calls) != queries {
		t.Errorf("%d queries run, want the dashboard's %d", len(f.calls), queries)
	}
	for _, c := range f.calls {
		if strings.Contains(c.query, "$") {
			t.Errorf("query with a variable left: %s", c.query)
		}
		if strings.Contains(c.query, "rate(") && !strings.Contains(c.query, "[2m]") {
			t.Errorf("rate over %s, want [2m]: max($__interval 1m + scrape 30s, 4 * 30s)", c.query)
		}
		if c.step != time.Minute || !c.end.Equal(window.End) {
			t.Errorf("query %s: end %s step %s", c.query, c.end, c.step)
		}
		// The tables' queries are instant: one point at the window's end.
		if instant := strings.HasPrefix(c.query, "topk(10,") || strings.HasSuffix(c.query, "== 1") || strings.HasSuffix(c.query, "== 0"); instant != c.start.Equal(c.end) {
			t.Errorf("query %s: start %s end %s", c.query, c.start, c.end)
		}
	}
	for _, want := range []string{
		`berth_pool_capacity_bytes{node=~".*",pool=~".*"}`,
		`topk(10, berth_volume_used_bytes{pool=~".*"}`,
	} {
		if !slices.ContainsFunc(f.calls, func(c call) bool { return strings.HasPrefix(c.query, want) }) {
			t.Errorf("no query starts with %s", want)
		}
	}
	for _, want := range []string{
		"node-a/default capacity", "node-b/default used", // legendFormat
		"CreateVolume OK", "CreateVolume Aborted", "NodePublishVolume", "default pvc-node-a",
		" GiB<", "%<", " req/s<", " s<", // units on the axes
		"(right)",                              // the Trash panel's bytes
		"persistentvolumeclaim", "data-node-a", // table columns and cells
		"10:00", "13:00", "16:00", // the window's times
	} {
		if !strings.Contains(svg, want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
	if strings.Contains(svg, "berth-node-node-a") {
		t.Error("a table shows the scrape target's pod label")
	}
	if strings.Contains(svg, "no data") {
		t.Error(`"no data" drawn with every query answered`)
	}
	again, _ := render(t, dash, &fake{}, window)
	if again != svg {
		t.Error("the same results drew a different SVG")
	}
}

// TestRenderNoData: queries without series are returned; a panel none of whose
// queries answered says "no data"; a series of NaN counts as none.
func TestRenderNoData(t *testing.T) {
	f := &fake{none: func(q string) bool {
		return strings.Contains(q, "berth_pool_used_bytes") || strings.Contains(q, "berth_pool_unserved")
	}}
	nan := QueryRangeFunc(func(ctx context.Context, q string, start, end time.Time, step time.Duration) ([]Series, error) {
		if strings.Contains(q, "histogram_quantile(0.99") {
			return []Series{{Labels: map[string]string{"method": "CreateVolume"}, Samples: []Sample{{T: start, V: math.NaN()}}}}, nil
		}
		return f.QueryRange(ctx, q, start, end, step)
	})
	svg, empty := render(t, readDashboard(t), nan, window)
	want := []string{"Pool capacity, used and free/B", "Pools not served/A", "Latency p99/A"}
	if !slices.Equal(empty, want) {
		t.Errorf("empty %q, want %q", empty, want)
	}
	if n := strings.Count(svg, ">no data<"); n != 2 {
		t.Errorf(`"no data" drawn %d times, want 2 (Pools not served, Latency p99)`, n)
	}
}

func TestRenderErrors(t *testing.T) {
	failing := QueryRangeFunc(func(context.Context, string, time.Time, time.Time, time.Duration) ([]Series, error) {
		return nil, errors.New("bad_data: parse error")
	})
	for _, tc := range []struct {
		name string
		dash string
		q    RangeQuerier
		o    Options
		want string
	}{
		{"query fails", string(readDashboard(t)), failing, window, `panel "Pool capacity, used and free" query A`},
		{"not JSON", "{", &fake{}, window, "dashboard JSON"},
		{"empty window", `{"panels": []}`, &fake{}, Options{Start: t0, End: t0}, "is empty"},
		{"collapsed row", `{"panels": [{"type": "row", "title": "R", "collapsed": true, "panels": [{"type": "stat"}]}]}`, &fake{}, window, "collapsed"},
		{"All without allValue", `{"templating": {"list": [{"name": "n", "type": "query", "includeAll": true, "current": {"value": ["$__all"]}}]}}`, &fake{}, window, "variable n"},
		{"three units", `{"panels": [{"type": "timeseries", "title": "T", "gridPos": {"w": 12, "h": 8},
			"fieldConfig": {"defaults": {"unit": "bytes"}, "overrides": [
				{"matcher": {"id": "byFrameRefID", "options": "B"}, "properties": [{"id": "unit", "value": "s"}]},
				{"matcher": {"id": "byFrameRefID", "options": "C"}, "properties": [{"id": "unit", "value": "percent"}]}]},
			"targets": [{"refId": "A", "expr": "a"}, {"refId": "B", "expr": "b"}, {"refId": "C", "expr": "c"}]}]}`, &fake{}, window, "more than two units"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			_, err := Render(context.Background(), []byte(tc.dash), tc.q, tc.o, &buf)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one with %q", err, tc.want)
			}
			if buf.Len() != 0 {
				t.Errorf("%d bytes written on error", buf.Len())
			}
		})
	}
}

// TestRenderPanelTypes: stat and gauge show the latest value, a table its rows
// highest first with the rest counted, a state-timeline its runs, an unknown type
// says so; variables take their saved values or the given ones.
func TestRenderPanelTypes(t *testing.T) {
	dash := `{"title": "T", "templating": {"list": [
		{"name": "node", "type": "query", "multi": true, "current": {"value": ["a.1", "b"]}},
		{"name": "one", "type": "custom", "query": "5,10", "current": {"value": "5"}}]},
	"panels": [
		{"type": "stat", "title": "S", "gridPos": {"x": 0, "y": 0, "w": 6, "h": 4}, "fieldConfig": {"defaults": {"unit": "percentunit"}},
		 "targets": [{"refId": "A", "expr": "stat{node=~\"$node\"}", "legendFormat": "{{node}}"}]},
		{"type": "gauge", "title": "G", "gridPos": {"x": 6, "y": 0, "w": 6, "h": 4}, "fieldConfig": {"defaults": {"unit": "bytes"}},
		 "targets": [{"refId": "A", "expr": "gauge", "legendFormat": "g"}]},
		{"type": "table", "title": "Tab", "gridPos": {"x": 12, "y": 0, "w": 12, "h": 4},
		 "targets": [{"refId": "A", "expr": "topk($one, rows)", "instant": true, "range": false}]},
		{"type": "state-timeline", "title": "ST", "gridPos": {"x": 0, "y": 4, "w": 12, "h": 4},
		 "targets": [{"refId": "A", "expr": "served{node=~\"${node}\"}", "legendFormat": "{{node}}"}]},
		{"type": "piechart", "title": "P", "gridPos": {"x": 12, "y": 4, "w": 12, "h": 4},
		 "targets": [{"refId": "A", "expr": "pie", "hide": false}, {"refId": "B", "expr": "hidden", "hide": true}]}]}`
	var queries []string
	q := QueryRangeFunc(func(_ context.Context, query string, start, end time.Time, step time.Duration) ([]Series, error) {
		queries = append(queries, query)
		switch {
		case strings.HasPrefix(query, "stat"):
			return []Series{{Labels: map[string]string{"node": "a"}, Samples: []Sample{{start, 0.1}, {end, 0.425}}}}, nil
		case query == "gauge":
			return []Series{{Samples: []Sample{{end, 3 << 30}}}}, nil
		case strings.HasPrefix(query, "topk"):
			var rows []Series
			for i := range 20 {
				rows = append(rows, Series{Labels: map[string]string{"__name__": "rows", "v": fmt.Sprintf("row%02d", i)}, Samples: []Sample{{end, float64(i)}}})
			}
			return rows, nil
		case strings.HasPrefix(query, "served"):
			var s []Sample
			for k, t := 0, start; !t.After(end); k, t = k+1, t.Add(step) {
				s = append(s, Sample{t, float64(min(1, k/180))}) // 0 for 3h, then 1
			}
			return []Series{{Labels: map[string]string{"node": "a"}, Samples: s}}, nil
		}
		return []Series{{Samples: []Sample{{end, 1}}}}, nil
	})
	svg, empty := render(t, []byte(dash), q, window)
	if len(empty) != 0 {
		t.Errorf("empty %q", empty)
	}
	wantQueries := []string{`stat{node=~"(a\\.1|b)"}`, "gauge", "topk(5, rows)", `served{node=~"(a\\.1|b)"}`, "pie"}
	if !slices.Equal(queries, wantQueries) {
		t.Errorf("queries %q, want %q", queries, wantQueries)
	}
	for _, want := range []string{
		">42.5%<", ">3 GiB<", // latest values
		">row19<", ">row18<", "more rows", // highest first, the rest counted
		`fill="#E24D42"`, `fill="#73BF69"`, // not served, then served
		"panel type piechart: not drawn",
	} {
		if !strings.Contains(svg, want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
	if strings.Contains(svg, ">row00<") || strings.Contains(svg, ">rows<") {
		t.Error("the table shows its lowest row or the metric's name")
	}
	if i, j := strings.Index(svg, ">row19<"), strings.Index(svg, ">row18<"); i > j {
		t.Error("table rows not highest first")
	}

	queries = nil
	render(t, []byte(dash), q, Options{Start: window.Start, End: window.End, Vars: map[string]string{"node": "n1", "one": "3"}})
	if queries[0] != `stat{node=~"n1"}` || queries[2] != "topk(3, rows)" {
		t.Errorf("queries %q with Vars node=n1 one=3", queries)
	}
}
