package main

import (
	"math"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(vs ...int) []time.Duration {
		out := make([]time.Duration, len(vs))
		for i, v := range vs {
			out[i] = time.Duration(v) * time.Millisecond
		}
		return out
	}
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	cases := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{name: "empty", sorted: nil, p: 50, want: 0},
		{name: "single value is every percentile", sorted: ms(7), p: 99, want: 7 * time.Millisecond},
		{name: "median of odd count", sorted: ms(1, 2, 3, 4, 5), p: 50, want: 3 * time.Millisecond},
		{name: "median of even count is the lower middle", sorted: ms(1, 2, 3, 4), p: 50, want: 2 * time.Millisecond},
		{name: "p99 of 100 values", sorted: hundred, p: 99, want: 99 * time.Millisecond},
		{name: "p100 is the maximum", sorted: hundred, p: 100, want: 100 * time.Millisecond},
		{name: "tiny p is the minimum", sorted: hundred, p: 0.001, want: 1 * time.Millisecond},
		{name: "p99 of 10 values is the maximum", sorted: ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), p: 99, want: 10 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentile(tc.sorted, tc.p); got != tc.want {
				t.Errorf("percentile(%v, %v) = %v, want %v", tc.sorted, tc.p, got, tc.want)
			}
		})
	}
}

func TestSummarizeDoesNotReorderInput(t *testing.T) {
	in := []time.Duration{5, 1, 4, 2, 3}
	s := summarize(in)
	if s.n != 5 || s.min != 1 || s.max != 5 || s.p50 != 3 || s.mean != 3 {
		t.Errorf("summarize(%v) = %+v", in, s)
	}
	if in[0] != 5 || in[1] != 1 {
		t.Errorf("summarize reordered its input: %v", in)
	}
}

func TestRatio(t *testing.T) {
	if got := ratio(3, 2); got != 1.5 {
		t.Errorf("ratio(3, 2) = %v, want 1.5", got)
	}
	if got := ratio(1, 0); !math.IsNaN(got) {
		t.Errorf("ratio(1, 0) = %v, want NaN", got)
	}
}
