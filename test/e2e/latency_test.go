package e2e

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
)

// TestPVCToRunningLatency measures, on the cluster, Berth beside rancher's
// local-path-provisioner, beside claims bound to PVs made beforehand (static: no
// provisioner, Kubernetes' own cost of a claim; benchstatic_test.go) and beside pods
// with an emptyDir (no claim: the limit), each in a namespace of its own:
//   - serial: a claim and its pod created -> the pod Running, one at a time
//     (BERTH_BENCH_SERIAL, 20): median;
//   - run: BERTH_BENCH_CLAIMS (200) claims with their pods created at once, placed by
//     the scheduler: until all are Running, and the median and p90 per pod;
//   - delete: all of them deleted -> every pod, claim and volume gone, host
//     directories included.
//
// Runs of 200 pods on this shared machine differ by 10-30% from one to the next, more
// than the gap the Berth / emptyDir target allows. So the run and delete are made in
// BERTH_BENCH_ROUNDS (3) rounds, Berth, static and emptyDir in each, in turns (the
// order reversed every other round), and each figure is the median over the rounds;
// each ratio is the median of the rounds' own ratios. The serial part and local-path
// (12 minutes a run) are in the first round only.
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
	rounds := testutil.EnvInt(t, "BERTH_BENCH_ROUNDS", 3, 1)
	size := os.Getenv("BERTH_BENCH_CLAIM_SIZE")
	if size == "" {
		size = "16Mi"
	}
	t.Logf("claims of %s; %d one at a time, then %d at once, in %d rounds", size, serial, n, rounds)
	figs := figures{}
	for r := 1; r <= rounds; r++ {
		t.Run(fmt.Sprintf("round%d", r), func(t *testing.T) {
			for _, s := range roundSubjects(r) {
				s.size = size
				t.Run(s.name, func(t *testing.T) { benchSubjectRun(t, s, r, serial, n, figs) })
			}
			run := fmt.Sprintf("run%d-all-running-", n)
			for _, q := range ratios {
				figs.ratio(t, fmt.Sprintf("run%d-%s-over-%s-round%d", n, q[0], q[1], r),
					fmt.Sprintf("%s%s-round%d", run, q[0], r), fmt.Sprintf("%s%s-round%d", run, q[1], r))
			}
		})
	}
	for _, s := range benchSubjects {
		for _, f := range []string{"run%d-all-running-%s", "run%d-median-%s", "run%d-p90-%s", "delete%d-all-gone-%s"} {
			figs.medianOver(t, fmt.Sprintf(f, n, s.name), rounds, "s")
		}
	}
	for _, q := range ratios {
		figs.medianOver(t, fmt.Sprintf("run%d-%s-over-%s", n, q[0], q[1]), rounds, "x")
	}
	run := fmt.Sprintf("run%d-all-running-", n)
	figs.ratio(t, fmt.Sprintf("run%d-local-path-over-berth", n), run+"local-path", run+"berth")
}

// ratios are the rounds' ratios of the 200 pods' all-Running times: the target's
// (Berth over emptyDir), and its two shares, Berth's own (over static PVs with no
// provisioner) and the cluster's claim handling (static over emptyDir).
var ratios = [][2]string{{"berth", "emptydir"}, {"berth", "static"}, {"static", "emptydir"}}

// roundSubjects is the order of round r: all of them in the first, then all but
// local-path, in reverse order every other round.
func roundSubjects(r int) []benchSubject {
	if r == 1 {
		return benchSubjects
	}
	var some []benchSubject
	for _, s := range benchSubjects {
		if s.name != "local-path" {
			some = append(some, s)
		}
	}
	if r%2 == 0 {
		slices.Reverse(some)
	}
	return some
}

// benchSubjectRun measures one subject in a namespace of its own: in round 1 the
// serial part first, then the run and the deletion of n pods.
func benchSubjectRun(t *testing.T, s benchSubject, round, serial, n int, figs figures) {
	if s.name == "local-path" {
		ensureLocalPath(t)
	}
	if s.static {
		ensureStatic(t)
	}
	c := setup(t, alone)
	poolBefore := berthVolumes()

	if round == 1 {
		if s.static {
			c.staticPVs(serial, s.size)
		}
		d := c.serialRuns(s, serial)
		t.Logf("%s, one at a time, %d pods: median %v, min %v, max %v", s.name, serial, median(d), minOf(d), maxOf(d))
		figs.add(t, fmt.Sprintf("serial%d-median-%s", serial, s.name), median(d))
		c.deleteAll(s, poolBefore, bulkTimeout(serial)) // not measured: a clean start for the run
	}

	if s.static {
		c.staticPVs(n, s.size)
	}
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
	if s.class != "" && !s.static { // a static claim has no provisioning steps
		c.claimPhases()
	}
	suffix := fmt.Sprintf("-%s-round%d", s.name, round)
	figs.add(t, fmt.Sprintf("run%d-all-running%s", n, suffix), maxOf(all))
	figs.add(t, fmt.Sprintf("run%d-median%s", n, suffix), median(all))
	figs.add(t, fmt.Sprintf("run%d-p90%s", n, suffix), pct(all, 0.9))

	figs.add(t, fmt.Sprintf("delete%d-all-gone%s", n, suffix), c.deleteAll(s, poolBefore, bulkTimeout(n)))
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
