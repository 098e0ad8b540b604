// Package dashrender draws a Grafana dashboard's panels as one SVG file, from the
// results of its queries over a time window. It is not Grafana: it exists so that
// Berth's dashboard (charts/berth/dashboards/berth.json) can be shown, and its every
// query checked for data, from a real Prometheus without building Grafana.
//
// Panels are laid out on the dashboard's 24-column grid (gridPos). A timeseries panel
// draws lines with the lowest and highest values and the window's times on its axes
// (a second unit, from a byFrameRefID override, gets the right axis); a stat or gauge
// panel shows each series' latest value; a table its rows' labels and latest values
// (sorted by value, highest first, as many as fit); a state-timeline each series' runs
// of equal values (0 red, anything else green). Series are named by the target's
// legendFormat ({{label}}) and sorted by name, so the same results give the same file.
// NaN and infinite samples are gaps; a series without a finite sample is left out.
package dashrender

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
)

// Options is the window the queries cover and what Grafana would substitute.
type Options struct {
	// Start and End bound the window; instant queries (tables) run at End.
	Start, End time.Time
	// Step is the range queries' resolution and $__interval. Zero: a 240th of the
	// window, rounded up to a second, at least ScrapeInterval.
	Step time.Duration
	// ScrapeInterval is the Grafana data source's scrape interval, from which
	// $__rate_interval is max($__interval + ScrapeInterval, 4 * ScrapeInterval).
	// Zero: 30s, the chart's metrics.podMonitor.interval.
	ScrapeInterval time.Duration
	// Vars replace the values of the dashboard's variables (or built-ins) by name,
	// inserted as given: {"node": "node-1"}. Otherwise each variable has its saved
	// current value ("All": its allValue).
	Vars map[string]string
}

// Render runs every query of every panel of the dashboard (its JSON model) through q
// over o's window and writes the SVG to w. It returns the queries that returned no
// series, as "panel title/refId" in the dashboard's order; a panel none of whose
// queries returned anything says "no data". A query's error, or a dashboard it cannot
// read, is returned as an error and nothing is written.
func Render(ctx context.Context, dash []byte, q RangeQuerier, o Options, w io.Writer) (empty []string, err error) {
	d, err := parseDashboard(dash)
	if err != nil {
		return nil, err
	}
	if !o.End.After(o.Start) {
		return nil, fmt.Errorf("window %s to %s is empty", o.Start, o.End)
	}
	if o.ScrapeInterval == 0 {
		o.ScrapeInterval = 30 * time.Second
	}
	if o.Step == 0 {
		o.Step = max(o.End.Sub(o.Start)/240, o.ScrapeInterval)
		if r := o.Step % time.Second; r != 0 {
			o.Step += time.Second - r
		}
	}
	vars, err := d.variables(o)
	if err != nil {
		return nil, err
	}
	var panels []evaluated
	for _, p := range d.Panels {
		e := evaluated{panel: p}
		for _, t := range p.Targets {
			if p.Type == "row" || t.Hide || t.Expr == "" {
				continue
			}
			r, err := evaluate(ctx, q, p, t, vars, o)
			if err != nil {
				return nil, err
			}
			if len(r.series) == 0 {
				empty = append(empty, p.Title+"/"+t.RefID)
			}
			e.results = append(e.results, r)
		}
		panels = append(panels, e)
	}
	var buf bytes.Buffer
	if err := draw(&buf, d, panels, o); err != nil {
		return nil, err
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		return nil, fmt.Errorf("write SVG: %w", err)
	}
	return empty, nil
}

// evaluated is a panel with its targets' results.
type evaluated struct {
	panel   panel
	results []result
}

func (e evaluated) series() []named {
	var all []named
	for _, r := range e.results {
		all = append(all, r.series...)
	}
	return all
}

// result is one target's series, named and sorted.
type result struct {
	refID, unit string
	series      []named
}

// named is a series with its legend and the unit of its values.
type named struct {
	name, unit string
	labels     map[string]string
	samples    []Sample // finite only
}

func evaluate(ctx context.Context, q RangeQuerier, p panel, t target, vars map[string]string, o Options) (result, error) {
	expr := interpolate(t.Expr, vars)
	start := o.Start
	if t.instantOnly() {
		start = o.End
	}
	got, err := q.QueryRange(ctx, expr, start, o.End, o.Step)
	if err != nil {
		return result{}, fmt.Errorf("panel %q query %s (%s): %w", p.Title, t.RefID, expr, err)
	}
	r := result{refID: t.RefID, unit: p.unit(t.RefID)}
	for _, s := range got {
		n := named{name: legend(t.LegendFormat, s.Labels, expr), unit: r.unit, labels: s.Labels}
		for _, smp := range s.Samples {
			if !math.IsNaN(smp.V) && !math.IsInf(smp.V, 0) {
				n.samples = append(n.samples, smp)
			}
		}
		if len(n.samples) > 0 {
			slices.SortFunc(n.samples, func(a, b Sample) int { return a.T.Compare(b.T) })
			r.series = append(r.series, n)
		}
	}
	sort.SliceStable(r.series, func(i, j int) bool {
		a, b := r.series[i], r.series[j]
		if a.name != b.name {
			return a.name < b.name
		}
		return metricString(a.labels) < metricString(b.labels)
	})
	return r, nil
}

var legendRE = regexp.MustCompile(`\{\{\s*([^}\s]+)\s*\}\}`)

// legend names a series as Grafana does: the legendFormat with {{label}} replaced
// (a missing label: empty); without a format, the series' metric{labels}, or the
// expression when it has no labels.
func legend(format string, labels map[string]string, expr string) string {
	if format == "" || format == "__auto" {
		if len(labels) == 0 {
			return expr
		}
		return metricString(labels)
	}
	return legendRE.ReplaceAllStringFunc(format, func(m string) string {
		return labels[legendRE.FindStringSubmatch(m)[1]]
	})
}

// metricString writes labels as name{a="1", b="2"}, keys sorted.
func metricString(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		if k != "__name__" {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%q", k, labels[k])
	}
	return labels["__name__"] + "{" + strings.Join(parts, ", ") + "}"
}

// errTooManyUnits: a timeseries panel has two axes, left and right.
var errTooManyUnits = errors.New("more than two units in one timeseries panel")
