package main

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// summary describes a sample of latencies.
type summary struct {
	n             int
	min, max      time.Duration
	mean          time.Duration
	p50, p90, p99 time.Duration
}

// percentile returns the nearest-rank p-th percentile (0 < p <= 100) of a
// sorted sample: the smallest value with at least p% of the sample at or
// below it. It returns 0 for an empty sample.
func percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	rank = max(1, min(rank, n))
	return sorted[rank-1]
}

// summarize sorts a copy of ds and returns its summary.
func summarize(ds []time.Duration) summary {
	if len(ds) == 0 {
		return summary{}
	}
	sorted := slices.Clone(ds)
	slices.Sort(sorted)
	var total time.Duration
	for _, d := range sorted {
		total += d
	}
	return summary{
		n:    len(sorted),
		min:  sorted[0],
		max:  sorted[len(sorted)-1],
		mean: total / time.Duration(len(sorted)),
		p50:  percentile(sorted, 50),
		p90:  percentile(sorted, 90),
		p99:  percentile(sorted, 99),
	}
}

// rate returns operations per second.
func rate(ops int, elapsed time.Duration) float64 {
	if elapsed <= 0 {
		return 0
	}
	return float64(ops) / elapsed.Seconds()
}

// ratio returns a/b, or NaN when b is zero.
func ratio(a, b float64) float64 {
	if b == 0 {
		return math.NaN()
	}
	return a / b
}

// fmtDur prints a duration with three significant figures in a fixed unit.
func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.3g s", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.3g ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.3g µs", float64(d)/float64(time.Microsecond))
	}
}
