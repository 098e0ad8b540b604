package dashrender

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// dashboard is the part of a Grafana dashboard's JSON model that is drawn.
type dashboard struct {
	Title      string `json:"title"`
	Templating struct {
		List []variable `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"`
	Multi      bool            `json:"multi"`
	IncludeAll bool            `json:"includeAll"`
	AllValue   string          `json:"allValue"`
	Current    struct {
		Value json.RawMessage `json:"value"`
	} `json:"current"`
}

type panel struct {
	Type        string   `json:"type"`
	Title       string   `json:"title"`
	GridPos     gridPos  `json:"gridPos"`
	Targets     []target `json:"targets"`
	Collapsed   bool     `json:"collapsed"`
	Panels      []panel  `json:"panels"`
	FieldConfig struct {
		Defaults struct {
			Unit string `json:"unit"`
		} `json:"defaults"`
		Overrides []struct {
			Matcher struct {
				ID      string `json:"id"`
				Options any    `json:"options"`
			} `json:"matcher"`
			Properties []struct {
				ID    string `json:"id"`
				Value any    `json:"value"`
			} `json:"properties"`
		} `json:"overrides"`
	} `json:"fieldConfig"`
}

type gridPos struct {
	X int `json:"x"`
	Y int `json:"y"`
	W int `json:"w"`
	H int `json:"h"`
}

type target struct {
	RefID        string `json:"refId"`
	Expr         string `json:"expr"`
	LegendFormat string `json:"legendFormat"`
	Instant      bool   `json:"instant"`
	Range        *bool  `json:"range"`
	Hide         bool   `json:"hide"`
}

// instantOnly: Grafana runs the query once, at the window's end.
func (t target) instantOnly() bool {
	return t.Instant && (t.Range == nil || !*t.Range)
}

// unit is the unit of a target's values: the panel's default, or an override
// matching the target's refId (byFrameRefID, the one matcher this package reads).
func (p panel) unit(refID string) string {
	u := p.FieldConfig.Defaults.Unit
	for _, o := range p.FieldConfig.Overrides {
		if o.Matcher.ID != "byFrameRefID" || o.Matcher.Options != refID {
			continue
		}
		for _, prop := range o.Properties {
			if s, ok := prop.Value.(string); ok && prop.ID == "unit" {
				u = s
			}
		}
	}
	return u
}

func parseDashboard(data []byte) (*dashboard, error) {
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("dashboard JSON: %w", err)
	}
	for _, p := range d.Panels {
		if p.Type == "row" && len(p.Panels) > 0 {
			return nil, fmt.Errorf("row %q is collapsed with panels inside: not supported, save the dashboard with its rows expanded", p.Title)
		}
	}
	return &d, nil
}

// variables returns the value of each of the dashboard's variables and of Grafana's
// built-ins, as Grafana's Prometheus data source interpolates them into a query.
func (d *dashboard) variables(o Options) (map[string]string, error) {
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		if _, ok := o.Vars[v.Name]; ok {
			continue
		}
		val, err := v.value()
		if err != nil {
			return nil, fmt.Errorf("variable %s: %w", v.Name, err)
		}
		vars[v.Name] = val
	}
	rangeS := strconv.FormatInt(int64(o.End.Sub(o.Start).Round(time.Second)/time.Second), 10)
	vars["__interval"] = promDuration(o.Step)
	vars["__interval_ms"] = strconv.FormatInt(o.Step.Milliseconds(), 10)
	vars["__rate_interval"] = promDuration(max(o.Step+o.ScrapeInterval, 4*o.ScrapeInterval))
	vars["__range"] = rangeS + "s"
	vars["__range_s"] = rangeS
	vars["__range_ms"] = strconv.FormatInt(o.End.Sub(o.Start).Milliseconds(), 10)
	for k, v := range o.Vars {
		vars[k] = v
	}
	return vars, nil
}

// value is the variable's saved current value: "All" is its allValue; several values,
// or one of a multi or include-all variable, are regex-escaped (and several joined as
// (a|b)), as Grafana's Prometheus data source does.
func (v variable) value() (string, error) {
	var vals []string
	raw := v.Current.Value
	if len(raw) == 0 || string(raw) == "null" {
		raw = v.Query // a datasource variable: its type; a custom one: its first option
		var q string
		if json.Unmarshal(raw, &q) != nil {
			return "", fmt.Errorf("no current value")
		}
		q, _, _ = strings.Cut(q, ",")
		return strings.TrimSpace(q), nil
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		vals = []string{one}
	} else if err := json.Unmarshal(raw, &vals); err != nil {
		return "", fmt.Errorf("current value %s: %w", raw, err)
	}
	if len(vals) == 1 && vals[0] == "$__all" {
		if v.AllValue == "" {
			return "", fmt.Errorf(`current value is "All" and it has no allValue (its options would have to be queried)`)
		}
		return v.AllValue, nil
	}
	if !v.Multi && !v.IncludeAll && len(vals) == 1 {
		return vals[0], nil
	}
	for i, s := range vals {
		vals[i] = strings.ReplaceAll(regexp.QuoteMeta(s), `\`, `\\`)
	}
	if len(vals) == 1 {
		return vals[0], nil
	}
	return "(" + strings.Join(vals, "|") + ")", nil
}

// varRE matches Grafana's $name, ${name} and [[name]].
var varRE = regexp.MustCompile(`\$(\w+)|\$\{(\w+)\}|\[\[(\w+)\]\]`)

// interpolate replaces the variables it knows; others stay, as in Grafana.
func interpolate(expr string, vars map[string]string) string {
	return varRE.ReplaceAllStringFunc(expr, func(m string) string {
		s := varRE.FindStringSubmatch(m)
		name := s[1] + s[2] + s[3]
		if v, ok := vars[name]; ok {
			return v
		}
		return m
	})
}

// promDuration writes d as a PromQL duration: 90s, 2m, 1h, 500ms.
func promDuration(d time.Duration) string {
	switch {
	case d%time.Second != 0:
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	}
	return strconv.FormatInt(int64(d/time.Second), 10) + "s"
}
