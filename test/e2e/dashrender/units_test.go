package dashrender

import (
	"math"
	"testing"
)

func TestFormatValue(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		unit string
		want string
	}{
		{0, "bytes", "0 B"},
		{512, "bytes", "512 B"},
		{1536, "bytes", "1.5 KiB"},
		{10 << 20, "bytes", "10 MiB"},
		{3.25 * (1 << 30), "bytes", "3.25 GiB"},
		{123.4 * (1 << 40), "bytes", "123 TiB"},
		{-2048, "bytes", "-2 KiB"},
		{1500, "decbytes", "1.5 kB"},
		{0.1234, "percentunit", "12.3%"},
		{1, "percentunit", "100%"},
		{0, "percentunit", "0%"},
		{0.0005, "percentunit", "0.05%"},
		{55.5, "percent", "55.5%"},
		{0, "s", "0 s"},
		{0.0000025, "s", "2.5 µs"},
		{0.0025, "s", "2.5 ms"},
		{0.5, "s", "500 ms"},
		{12.34, "s", "12.3 s"},
		{90, "s", "1.5 min"},
		{7200, "s", "2 h"},
		{172800, "s", "2 d"},
		{250, "ms", "250 ms"},
		{0.25, "reqps", "0.25 req/s"},
		{3, "ops", "3 ops/s"},
		{1234, "", "1.23 k"},
		{2.5e6, "short", "2.5 M"},
		{42, "none", "42"},
		{7, "widgets", "7 widgets"},
		{math.NaN(), "bytes", "NaN"},
		{math.Inf(1), "s", "+Inf"},
		{math.Inf(-1), "", "-Inf"},
	} {
		if got := formatValue(tc.v, tc.unit); got != tc.want {
			t.Errorf("formatValue(%v, %q) = %q, want %q", tc.v, tc.unit, got, tc.want)
		}
	}
}
