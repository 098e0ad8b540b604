package kubectlberth

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"sigs.k8s.io/yaml"
)

// Output formats of -o.
const (
	OutputTable = ""
	OutputJSON  = "json"
	OutputYAML  = "yaml"
)

func checkOutput(o string) error {
	switch o {
	case OutputTable, "table", OutputJSON, OutputYAML:
		return nil
	}
	return fmt.Errorf("-o %q: use json or yaml (or leave it out for a table)", o)
}

// writeStructured writes v as JSON (indented) or YAML.
func writeStructured(w io.Writer, format string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if format == OutputYAML {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return err
		}
	} else {
		b = append(b, '\n')
	}
	_, err = w.Write(b)
	return err
}

// table writes aligned columns, as kubectl get does.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cells ...string) { fmt.Fprintln(t.tw, strings.Join(cells, "\t")) }

func (t *table) flush() error { return t.tw.Flush() }

// humanBytes writes a size in binary units: 512 B, 1.5 KiB, 20 MiB, 1.2 GiB; one
// decimal below 10 of a unit, none above, never a trailing ".0".
func humanBytes(n int64) string {
	if n < 0 {
		return "-" + humanBytes(-n)
	}
	const units = "KMGTPE"
	if n < 1024 {
		return strconv.FormatInt(n, 10) + " B"
	}
	v, u := float64(n), -1
	for v >= 1024 && u < len(units)-1 {
		v /= 1024
		u++
	}
	s := strconv.FormatFloat(v, 'f', 0, 64)
	if v < 10 {
		s = strings.TrimSuffix(strconv.FormatFloat(v, 'f', 1, 64), ".0")
	}
	return s + " " + string(units[u]) + "iB"
}

// optBytes is humanBytes of a figure that may be unknown ("-").
func optBytes(n *int64) string {
	if n == nil {
		return "-"
	}
	return humanBytes(*n)
}

// percent of part in whole, rounded down, "" when whole is 0.
func percent(part, whole int64) string {
	if whole <= 0 {
		return ""
	}
	return strconv.FormatInt(part*100/whole, 10) + "%"
}

// progressBar draws done of total in width cells: [#####-----] 50%.
func progressBar(done, total int64, width int) string {
	if total <= 0 {
		return "[" + strings.Repeat("?", width) + "]"
	}
	done = min(max(done, 0), total)
	full := int(done * int64(width) / total)
	return "[" + strings.Repeat("#", full) + strings.Repeat("-", width-full) + "] " + percent(done, total)
}
