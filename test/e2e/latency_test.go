package e2e

import (
	"fmt"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
)

// TestPVCToRunningLatency measures, on the cluster, Berth beside rancher's
// local-path-provisioner and beside pods with an emptyDir (no provisioner: the limit),
// each in a namespace of its own:
//   - serial: a claim and its pod created -> the pod Running, one at a time
//     (BERTH_BENCH_SERIAL, 20): median;
//   - run: BERTH_BENCH_CLAIMS (200) claims with their pods created at once, placed by
//     the scheduler: until all are Running, and the median and p90 per pod;
//   - delete: all of them deleted -> every pod, claim and volume gone, host
//     directories included.
//
// The claims ask for BERTH_BENCH_CLAIM_SIZE (16Mi): small enough that every node's
// share of 200 fits its disk, so that placement is the scheduler's spreading and not
// the small nodes filling up (docs/benchmarks.md).
//
// It installs local-path-provisioner (test/e2e/local-path) when it is missing and
// removes it afterwards. It measures, it does not assert timing: run with
// BERTH_E2E_BENCH=1 (make e2e-bench); the "figure:" lines go to docs/benchmarks.md.
func TestPVCToRunningLatency(t *testing.T) {
	if os.Getenv("BERTH_E2E_BENCH") != "1" || os.Getenv("BERTH_E2E") != "1" {
		t.Skip("measurement on the cluster: run with BERTH_E2E=1 BERTH_E2E_BENCH=1 (make e2e-bench)")
	}
	serial := testutil.EnvInt(t, "BERTH_BENCH_SERIAL", 20, 1)
	n := testutil.EnvInt(t, "BERTH_BENCH_CLAIMS", 200, 1)
	size := os.Getenv("BERTH_BENCH_CLAIM_SIZE")
	if size == "" {
		size = "16Mi"
	}
	t.Logf("claims of %s; %d one at a time, then %d at once", size, serial, n)
	figs := figures{}
	for _, s := range benchSubjects {
		s.size = size
		t.Run(s.name, func(t *testing.T) { benchSubjectRun(t, s, serial, n, figs) })
	}
	run := fmt.Sprintf("run%d-all-running-", n)
	figs.ratio(t, fmt.Sprintf("run%d-berth-over-emptydir", n), run+"berth", run+"emptydir")
	figs.ratio(t, fmt.Sprintf("run%d-local-path-over-berth", n), run+"local-path", run+"berth")
}

// benchSubjectRun measures one subject in a namespace of its own.
func benchSubjectRun(t *testing.T, s benchSubject, serial, n int, figs figures) {
	if s.name == "local-path" {
		ensureLocalPath(t)
	}
	c := setup(t, alone)
	poolBefore := berthVolumes()

	d := c.serialRuns(s, serial)
	t.Logf("%s, one at a time, %d pods: median %v, min %v, max %v", s.name, serial, median(d), minOf(d), maxOf(d))
	figs.add(t, fmt.Sprintf("serial%d-median-%s", serial, s.name), median(d))
	c.deleteAll(s, poolBefore, bulkTimeout(serial)) // not measured: a clean start for the run

	objs := make([]string, n)
	for i := range n {
		objs[i] = benchObjects(s, fmt.Sprintf("c%d", i))
	}
	start := time.Now()
	c.createAtOnce(objs, bulkCreators)
	t.Logf("%s: %d pods' objects created in %v by %d kubectl processes", s.name, n, time.Since(start).Round(10*time.Millisecond), bulkCreators)
	all := c.runningTimes(start, n, bulkTimeout(n))
	c.placement()
	c.phases()
	if s.class != "" {
		c.claimPhases()
	}
	figs.add(t, fmt.Sprintf("run%d-all-running-%s", n, s.name), maxOf(all))
	figs.add(t, fmt.Sprintf("run%d-median-%s", n, s.name), median(all))
	figs.add(t, fmt.Sprintf("run%d-p90-%s", n, s.name), pct(all, 0.9))

	figs.add(t, fmt.Sprintf("delete%d-all-gone-%s", n, s.name), c.deleteAll(s, poolBefore, bulkTimeout(n)))
}

// serialRuns creates count pods (with their claims) one at a time, each once the one
// before is Running, and returns the time each took to be Running.
func (c *cluster) serialRuns(s benchSubject, count int) []time.Duration {
	c.t.Helper()
	var d []time.Duration
	for i := range count {
		name := fmt.Sprintf("s%d", i)
		start := time.Now()
		c.create(benchObjects(s, name))
		c.waitPhase(name, "Running", 3*time.Minute)
		d = append(d, time.Since(start))
	}
	return d
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
