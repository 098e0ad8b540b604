package dashrender

import (
	"bytes"
	"cmp"
	"encoding/xml"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// The grid: Grafana's 24 columns, rows of 30 px with 8 px between them.
const (
	colW    = 64.0
	cellH   = 30.0
	gap     = 8.0
	pad     = 16.0
	headerH = 56.0
	pageW   = 2*pad + 24*colW
)

// palette is Grafana's classic one.
var palette = []string{
	"#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A9", "#705DA0",
	"#508642", "#CCA300", "#447EBC", "#C15C17", "#890F02", "#0A437C", "#6D1F62", "#584477",
}

const (
	textColor  = "#1f2328"
	mutedColor = "#6e7781"
	gridColor  = "#e4e6e8"
	okColor    = "#73BF69"
	badColor   = "#E24D42"
)

// canvas writes SVG elements.
type canvas struct{ *bytes.Buffer }

func (c canvas) printf(format string, args ...any) { fmt.Fprintf(c, format, args...) }

// text writes s at x, y; anchor is start, middle or end; mono picks the monospace face.
func (c canvas) text(x, y, size float64, anchor, color string, bold, mono bool, s string) {
	weight, family := "", ""
	if bold {
		weight = ` font-weight="bold"`
	}
	if mono {
		family = ` font-family="monospace"`
	}
	c.printf(`<text x="%.1f" y="%.1f" font-size="%g" text-anchor="%s" fill="%s"%s%s>%s</text>`+"\n",
		x, y, size, anchor, color, weight, family, esc(s))
}

func (c canvas) rect(x, y, w, h float64, fill string) {
	c.printf(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`+"\n", x, y, max(w, 0), max(h, 0), fill)
}

func (c canvas) line(x1, y1, x2, y2 float64, color string) {
	c.printf(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1"/>`+"\n", x1, y1, x2, y2, color)
}

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s)) // a strings.Builder does not fail
	return b.String()
}

// textW estimates the width of s: about 0.6 em a character (sans-serif runs
// narrower, so text measured by this fits).
func textW(s string, size float64) float64 {
	return float64(len([]rune(s))) * size * 0.6
}

// fit cuts s to width w, marking the cut with "…".
func fit(s string, size, w float64) string {
	if textW(s, size) <= w {
		return s
	}
	r := []rune(s)
	n := int(w/(size*0.6)) - 1
	if n < 1 {
		return "…"
	}
	return string(r[:min(n, len(r))]) + "…"
}

// box is a rectangle in pixels.
type box struct{ x, y, w, h float64 }

func gridBox(g gridPos) box {
	return box{
		x: pad + float64(g.X)*colW,
		y: headerH + float64(g.Y)*(cellH+gap),
		w: float64(g.W)*colW - gap,
		h: float64(g.H)*cellH + float64(max(g.H-1, 0))*gap,
	}
}

func draw(buf *bytes.Buffer, d *dashboard, panels []evaluated, o Options) error {
	bottom := 0
	for _, e := range panels {
		bottom = max(bottom, e.panel.GridPos.Y+e.panel.GridPos.H)
	}
	pageH := headerH + float64(bottom)*(cellH+gap) + pad
	c := canvas{buf}
	c.printf(`<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif">`+"\n",
		pageW, pageH, pageW, pageH)
	c.rect(0, 0, pageW, pageH, "#f4f5f5")
	c.text(pad, 26, 18, "start", textColor, true, false, d.Title)
	c.text(pad, 44, 11, "start", mutedColor, false, false, fmt.Sprintf(
		"%s to %s UTC, step %s. Drawn by test/e2e/dashrender from Prometheus query results, not by Grafana.",
		o.Start.UTC().Format("2006-01-02 15:04:05"), o.End.UTC().Format("2006-01-02 15:04:05"), o.Step))
	for _, e := range panels {
		b := gridBox(e.panel.GridPos)
		if e.panel.Type == "row" {
			c.text(b.x, b.y+b.h-8, 15, "start", textColor, true, false, e.panel.Title)
			c.line(b.x, b.y+b.h-1, b.x+b.w, b.y+b.h-1, "#c7d0d9")
			continue
		}
		if err := drawPanel(c, e, b, o); err != nil {
			return fmt.Errorf("panel %q: %w", e.panel.Title, err)
		}
	}
	c.printf("</svg>\n")
	return nil
}

func drawPanel(c canvas, e evaluated, b box, o Options) error {
	c.printf(`<g><rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" rx="3" fill="#ffffff" stroke="#d8d9da"/>`+"\n", b.x, b.y, b.w, b.h)
	c.text(b.x+8, b.y+18, 13, "start", textColor, true, false, fit(e.panel.Title, 13, b.w-16))
	in := box{x: b.x + 8, y: b.y + 28, w: b.w - 16, h: b.h - 34}
	series := e.series()
	var err error
	switch {
	case len(series) == 0:
		c.text(in.x+in.w/2, in.y+in.h/2, 14, "middle", mutedColor, false, false, "no data")
	case e.panel.Type == "timeseries":
		err = drawTimeseries(c, series, in, o)
	case e.panel.Type == "stat" || e.panel.Type == "gauge":
		drawStat(c, series, in)
	case e.panel.Type == "table":
		drawTable(c, series, in)
	case e.panel.Type == "state-timeline":
		drawStateTimeline(c, series, in, o)
	default:
		c.text(in.x+in.w/2, in.y+in.h/2, 12, "middle", mutedColor, false, false,
			fmt.Sprintf("panel type %s: not drawn by dashrender", e.panel.Type))
	}
	c.printf("</g>\n")
	return err
}

// legendEntry is a colored name under a plot.
type legendEntry struct{ name, color string }

// layoutLegend places entries in lines of width w, at most maxLines; when they do
// not all fit, the last line ends with how many more there are.
func layoutLegend(entries []legendEntry, w float64, maxLines int) [][]legendEntry {
	var lines [][]legendEntry
	used := w
	for _, e := range entries {
		if used+entryW(e, w) > w {
			lines = append(lines, nil)
			used = 0
		}
		lines[len(lines)-1] = append(lines[len(lines)-1], e)
		used += entryW(e, w)
	}
	if len(lines) <= maxLines {
		return lines
	}
	lines = lines[:maxLines]
	last := lines[maxLines-1]
	shown := 0
	for _, l := range lines {
		shown += len(l)
	}
	for {
		more := legendEntry{name: fmt.Sprintf("+%d more", len(entries)-shown)}
		used := entryW(more, w)
		for _, e := range last {
			used += entryW(e, w)
		}
		if used <= w || len(last) == 0 {
			lines[maxLines-1] = append(last, more)
			return lines
		}
		last = last[:len(last)-1]
		shown--
	}
}

func entryW(e legendEntry, w float64) float64 { return min(textW(e.name, 11)+22, w) }

func drawLegend(c canvas, lines [][]legendEntry, x, y, w float64) {
	for i, line := range lines {
		lx := x
		ly := y + float64(i)*14 + 10
		for _, e := range line {
			ew := entryW(e, w)
			if e.color != "" {
				c.rect(lx, ly-7, 12, 3, e.color)
				c.text(lx+16, ly, 11, "start", textColor, false, false, fit(e.name, 11, w-22))
			} else {
				c.text(lx, ly, 11, "start", mutedColor, false, false, e.name)
			}
			lx += ew
		}
	}
}

// axis is the scale of one unit's series.
type axis struct {
	unit   string
	lo, hi float64
}

func (a axis) y(v float64, top, h float64) float64 {
	return top + h - (v-a.lo)/(a.hi-a.lo)*h
}

func (a axis) labels() []string {
	return []string{formatValue(a.hi, a.unit), formatValue((a.lo+a.hi)/2, a.unit), formatValue(a.lo, a.unit)}
}

func timeLabel(t time.Time, window time.Duration) string {
	if window > 24*time.Hour {
		return t.UTC().Format("01-02 15:04")
	}
	return t.UTC().Format("15:04")
}

func drawTimeseries(c canvas, series []named, in box, o Options) error {
	var axes []axis
	axisOf := make([]int, len(series))
	for i, s := range series {
		a := slices.IndexFunc(axes, func(a axis) bool { return a.unit == s.unit })
		if a < 0 {
			if len(axes) == 2 {
				return errTooManyUnits
			}
			axes = append(axes, axis{unit: s.unit, lo: 0, hi: math.Inf(-1)})
			a = len(axes) - 1
		}
		axisOf[i] = a
		for _, smp := range s.samples {
			axes[a].lo = min(axes[a].lo, smp.V)
			axes[a].hi = max(axes[a].hi, smp.V)
		}
	}
	for i := range axes {
		axes[i].hi = max(axes[i].hi, 0)
		if axes[i].hi == axes[i].lo {
			axes[i].hi = axes[i].lo + 1
		}
	}
	entries := make([]legendEntry, len(series))
	for i, s := range series {
		entries[i] = legendEntry{name: s.name, color: palette[i%len(palette)]}
		if axisOf[i] == 1 {
			entries[i].name += " (right)"
		}
	}
	lines := layoutLegend(entries, in.w, max(1, int(in.h*0.45/14)))
	legendH := float64(len(lines))*14 + 4
	labelW := func(a axis) float64 {
		w := 0.0
		for _, l := range a.labels() {
			w = max(w, textW(l, 10))
		}
		return w + 6
	}
	plot := box{x: in.x + labelW(axes[0]), y: in.y + 6, w: in.w - labelW(axes[0]), h: in.h - legendH - 22}
	if len(axes) == 2 {
		plot.w -= labelW(axes[1])
	}
	for i, l := range axes[0].labels() {
		y := plot.y + float64(i)*plot.h/2
		c.line(plot.x, y, plot.x+plot.w, y, gridColor)
		c.text(plot.x-4, y+3, 10, "end", mutedColor, false, false, l)
	}
	if len(axes) == 2 {
		for i, l := range axes[1].labels() {
			c.text(plot.x+plot.w+4, plot.y+float64(i)*plot.h/2+3, 10, "start", mutedColor, false, false, l)
		}
	}
	window := o.End.Sub(o.Start)
	for i, t := range []time.Time{o.Start, o.Start.Add(window / 2), o.End} {
		anchor := []string{"start", "middle", "end"}[i]
		c.text(plot.x+float64(i)*plot.w/2, plot.y+plot.h+14, 10, anchor, mutedColor, false, false, timeLabel(t, window))
	}
	x := func(t time.Time) float64 {
		return plot.x + float64(t.Sub(o.Start))/float64(window)*plot.w
	}
	for i, s := range series {
		color := palette[i%len(palette)]
		a := axes[axisOf[i]]
		var run [][2]float64
		flush := func() {
			if len(run) == 1 {
				c.printf(`<circle cx="%.1f" cy="%.1f" r="2" fill="%s"/>`+"\n", run[0][0], run[0][1], color)
			} else if len(run) > 1 {
				points := make([]string, len(run))
				for i, p := range run {
					points[i] = fmt.Sprintf("%.1f,%.1f", p[0], p[1])
				}
				c.printf(`<polyline points="%s" fill="none" stroke="%s" stroke-width="1.5"/>`+"\n", strings.Join(points, " "), color)
			}
			run = nil
		}
		for j, smp := range s.samples {
			if j > 0 && smp.T.Sub(s.samples[j-1].T) > o.Step*3/2 {
				flush()
			}
			run = append(run, [2]float64{x(smp.T), a.y(smp.V, plot.y, plot.h)})
		}
		flush()
	}
	drawLegend(c, lines, in.x, in.y+in.h-legendH, in.w)
	return nil
}

// latest is a series' last sample's value.
func latest(s named) float64 { return s.samples[len(s.samples)-1].V }

func drawStat(c canvas, series []named, in box) {
	cols := max(1, min(len(series), int(in.w/150)))
	cellW, boxH := in.w/float64(cols), 56.0
	if len(series) <= cols {
		boxH = in.h
	}
	shown := min(len(series), max(1, int(in.h/boxH))*cols)
	if shown < len(series) {
		shown--
	}
	for i := range shown {
		s := series[i]
		x := in.x + float64(i%cols)*cellW
		y := in.y + float64(i/cols)*boxH
		v := formatValue(latest(s), s.unit)
		size := min(32, boxH*0.5, (cellW-8)/(0.6*float64(len([]rune(v)))))
		c.text(x+cellW/2, y+boxH/2-size/2, 11, "middle", mutedColor, false, false, fit(s.name, 11, cellW-8))
		c.text(x+cellW/2, y+boxH/2+size/2+4, size, "middle", palette[i%len(palette)], true, false, v)
	}
	if shown < len(series) {
		c.text(in.x+float64(shown%cols)*cellW+cellW/2, in.y+float64(shown/cols)*boxH+boxH/2, 12, "middle", mutedColor, false, false,
			fmt.Sprintf("+%d more", len(series)-shown))
	}
}

// hiddenColumns are the scrape target's labels (and the name), left out of tables.
var hiddenColumns = []string{"__name__", "pod", "container", "endpoint", "instance", "job", "service"}

func drawTable(c canvas, series []named, in box) {
	rows := slices.Clone(series)
	slices.SortStableFunc(rows, func(a, b named) int {
		if va, vb := latest(a), latest(b); va != vb {
			if va > vb {
				return -1
			}
			return 1
		}
		return strings.Compare(metricString(a.labels), metricString(b.labels))
	})
	var cols []string
	for _, s := range rows {
		for k := range s.labels {
			if !slices.Contains(cols, k) && !slices.Contains(hiddenColumns, k) {
				cols = append(cols, k)
			}
		}
	}
	slices.Sort(cols)
	cells := make([][]string, len(rows))
	for i, s := range rows {
		for _, k := range cols {
			cells[i] = append(cells[i], s.labels[k])
		}
		cells[i] = append(cells[i], formatValue(latest(s), s.unit))
	}
	header := append(slices.Clone(cols), "Value")
	const size, rowH = 11.0, 17.0
	widths := make([]float64, len(header))
	for j, h := range header {
		widths[j] = textW(h, size) + 12
		for _, r := range cells {
			widths[j] = max(widths[j], textW(r[j], size)+12)
		}
	}
	shareWidths(widths[:len(cols)], in.w-widths[len(cols)])
	maxRows := max(1, int((in.h-rowH)/rowH))
	shown := min(len(rows), maxRows)
	if shown < len(rows) {
		shown--
	}
	c.rect(in.x, in.y, in.w, rowH, "#f4f5f5")
	drawRow := func(y float64, vals []string, bold bool) {
		x := in.x
		for j, v := range vals {
			if j == len(vals)-1 {
				c.text(in.x+in.w-6, y+12, size, "end", textColor, bold, true, v)
				continue
			}
			c.text(x+6, y+12, size, "start", textColor, bold, true, fit(v, size, widths[j]-10))
			x += widths[j]
		}
	}
	drawRow(in.y, header, true)
	for i := range shown {
		y := in.y + float64(i+1)*rowH
		c.line(in.x, y, in.x+in.w, y, gridColor)
		drawRow(y, cells[i], false)
	}
	if shown < len(rows) {
		c.text(in.x+6, in.y+float64(shown+1)*rowH+12, size, "start", mutedColor, false, false,
			fmt.Sprintf("… %d more rows", len(rows)-shown))
	}
}

// shareWidths narrows the widest columns until they fit in room: each gets its own
// width or an equal share of what the narrower ones leave, whichever is less.
func shareWidths(widths []float64, room float64) {
	order := make([]int, len(widths))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(widths[a], widths[b]) })
	for n, i := range order {
		share := max(room/float64(len(order)-n), 0)
		widths[i] = min(widths[i], share)
		room -= widths[i]
	}
}

func drawStateTimeline(c canvas, series []named, in box, o Options) {
	const rowGap = 4.0
	rowH := min(24, max(14, (in.h-18)/float64(len(series))-rowGap))
	maxRows := max(1, int((in.h-18)/(rowH+rowGap)))
	shown := min(len(series), maxRows)
	if shown < len(series) {
		shown--
	}
	labelW := 0.0
	for _, s := range series[:shown] {
		labelW = max(labelW, textW(s.name, 11)+8)
	}
	labelW = min(labelW, in.w*0.35)
	plot := box{x: in.x + labelW, y: in.y, w: in.w - labelW, h: in.h - 18}
	window := o.End.Sub(o.Start)
	x := func(t time.Time) float64 {
		return plot.x + float64(t.Sub(o.Start))/float64(window)*plot.w
	}
	for i, s := range series[:shown] {
		y := plot.y + float64(i)*(rowH+rowGap)
		c.text(in.x, y+rowH/2+4, 11, "start", textColor, false, false, fit(s.name, 11, labelW-8))
		for j := 0; j < len(s.samples); {
			k := j
			// A run: equal values, each sample within a step and a half of the last.
			for k+1 < len(s.samples) && s.samples[k+1].V == s.samples[j].V && s.samples[k+1].T.Sub(s.samples[k].T) <= o.Step*3/2 {
				k++
			}
			end := s.samples[k].T.Add(o.Step)
			if k+1 < len(s.samples) && s.samples[k+1].T.Sub(s.samples[k].T) <= o.Step*3/2 {
				end = s.samples[k+1].T
			}
			if end.After(o.End) {
				end = o.End
			}
			x0, x1 := x(s.samples[j].T), x(end)
			if x1-x0 < 1 {
				x1 = x0 + 1
			}
			color := okColor
			if s.samples[j].V == 0 {
				color = badColor
			}
			c.rect(x0, y, x1-x0, rowH, color)
			if v := formatValue(s.samples[j].V, s.unit); textW(v, 10)+6 < x1-x0 {
				c.text((x0+x1)/2, y+rowH/2+3.5, 10, "middle", "#ffffff", true, false, v)
			}
			j = k + 1
		}
	}
	if shown < len(series) {
		c.text(in.x, plot.y+float64(shown)*(rowH+rowGap)+rowH/2+4, 11, "start", mutedColor, false, false,
			fmt.Sprintf("+%d more", len(series)-shown))
	}
	for i, t := range []time.Time{o.Start, o.Start.Add(window / 2), o.End} {
		anchor := []string{"start", "middle", "end"}[i]
		c.text(plot.x+float64(i)*plot.w/2, in.y+in.h-4, 10, anchor, mutedColor, false, false, timeLabel(t, window))
	}
}
