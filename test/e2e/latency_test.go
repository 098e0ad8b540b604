package e2e

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestPVCToRunningLatency measures, on the cluster, the time from a claim and its pod
// being created to the pod Running: one at a time (median of 20), then 100 at once.
// It measures, it does not assert timing: run with BERTH_E2E_BENCH=1 (make e2e-bench);
// the figures go to docs/benchmarks.md by hand.
func TestPVCToRunningLatency(t *testing.T) {
	if os.Getenv("BERTH_E2E_BENCH") != "1" {
		t.Skip("measurement: run with BERTH_E2E_BENCH=1")
	}
	c := setup(t)
	const sleeper = "sleep 3600"

	var serial []time.Duration
	for i := range 20 {
		name := fmt.Sprintf("s%d", i)
		start := time.Now()
		c.apply(pvc(name, "berth", "64Mi", "Filesystem") + "---\n" + podOn(name, name, sleeper, "Never"))
		c.waitPhase(name, "Running", 2*time.Minute)
		serial = append(serial, time.Since(start))
	}
	t.Logf("one at a time, 20 claims: median %v, min %v, max %v", median(serial), minOf(serial), maxOf(serial))

	var b strings.Builder
	for i := range 100 {
		name := fmt.Sprintf("c%d", i)
		b.WriteString(pvc(name, "berth", "64Mi", "Filesystem") + "---\n" + podOn(name, name, sleeper, "Never") + "---\n")
	}
	start := time.Now()
	c.apply(b.String())
	running := map[string]time.Duration{}
	c.waitFor("100 pods Running", 10*time.Minute, func() bool {
		out, _ := c.try("get", "pods", "-o", `jsonpath={range .items[*]}{.metadata.name} {.status.phase}{"\n"}{end}`)
		now := time.Since(start)
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 2 && strings.HasPrefix(f[0], "c") && f[1] == "Running" {
				if _, ok := running[f[0]]; !ok {
					running[f[0]] = now
				}
			}
		}
		return len(running) == 100
	})
	var all []time.Duration
	for _, d := range running {
		all = append(all, d)
	}
	t.Logf("100 claims at once: all Running after %v; per pod median %v, p90 %v",
		maxOf(all), median(all), pct(all, 0.9))
}

func sorted(d []time.Duration) []time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}
func median(d []time.Duration) time.Duration { return pct(d, 0.5) }
func pct(d []time.Duration, p float64) time.Duration {
	s := sorted(d)
	return s[int(float64(len(s)-1)*p+0.5)].Round(10 * time.Millisecond)
}
func minOf(d []time.Duration) time.Duration { return sorted(d)[0].Round(10 * time.Millisecond) }
func maxOf(d []time.Duration) time.Duration { return sorted(d)[len(d)-1].Round(10 * time.Millisecond) }
