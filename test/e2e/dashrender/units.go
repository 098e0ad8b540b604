package dashrender

import (
	"math"
	"strconv"
	"strings"
)

// formatValue writes v in Grafana's unit (fieldConfig unit): bytes (IEC), decbytes
// (SI), percentunit (0-1), percent (0-100), s and ms, reqps and ops (per second);
// none, short or no unit: a number with k, M, G... Another unit is appended as is.
func formatValue(v float64, unit string) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	switch unit {
	case "bytes":
		return scaled(v, 1024, []string{" B", " KiB", " MiB", " GiB", " TiB", " PiB", " EiB"})
	case "decbytes":
		return scaled(v, 1000, []string{" B", " kB", " MB", " GB", " TB", " PB", " EB"})
	case "percentunit":
		return number(v*100) + "%"
	case "percent":
		return number(v) + "%"
	case "s":
		return duration(v)
	case "ms":
		return duration(v / 1000)
	case "reqps":
		return short(v) + " req/s"
	case "ops":
		return short(v) + " ops/s"
	case "", "none", "short":
		return short(v)
	}
	return short(v) + " " + unit
}

func short(v float64) string {
	return strings.TrimSpace(scaled(v, 1000, []string{"", " k", " M", " G", " T", " P", " E"}))
}

// scaled divides v by base until it is below base, and names the step.
func scaled(v, base float64, names []string) string {
	i := 0
	for math.Abs(v) >= base && i < len(names)-1 {
		v /= base
		i++
	}
	return number(v) + names[i]
}

// duration writes seconds as µs, ms, s, min, h or d.
func duration(s float64) string {
	a := math.Abs(s)
	switch {
	case a == 0:
		return "0 s"
	case a < 1e-3:
		return number(s*1e6) + " µs"
	case a < 1:
		return number(s*1e3) + " ms"
	case a < 60:
		return number(s) + " s"
	case a < 3600:
		return number(s/60) + " min"
	case a < 86400:
		return number(s/3600) + " h"
	}
	return number(s/86400) + " d"
}

// number writes v with three significant digits at most (integers whole), no
// trailing zeros.
func number(v float64) string {
	a := math.Abs(v)
	prec := 2
	switch {
	case a >= 100 || a == math.Trunc(a):
		prec = 0
	case a >= 10:
		prec = 1
	case a < 0.01:
		prec = 4
	}
	s := strconv.FormatFloat(v, 'f', prec, 64)
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	if s == "-0" {
		s = "0"
	}
	return s
}
