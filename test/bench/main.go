// Command bench measures the Berth CSI driver against the floor its host
// allows: controller create+delete throughput against the raw cost of a
// durable create+delete on the same file system, node publish and unpublish
// latency against an empty call on the same socket plus the raw syscalls each
// needs, and start-up time and memory with many volumes.
//
// It starts the driver itself on a temporary pool, and stops it and removes
// everything it made when done, interrupted or failing:
//
//	go build -o bin/csi-driver ./cmd/csi-driver
//	sudo go run ./test/bench --driver bin/csi-driver [--n 1000] [--dir DIR] [--out docs/benchmarks.md]
//
// The data path (--data, on by default) compares what a pod writing through
// an image volume and a quota volume gets with the host directory the pools
// live on: see dataio.go for the workloads.
//
// Only the controller and node parts, quickly:
//
//	sudo go run ./test/bench --driver bin/csi-driver --n 10 --scale=false --data=false --snapshots=false
//
// Besides the table, it prints "figure: NAME VALUE UNIT" lines for scripts
// that compare runs (the node part's p50s and ratios).
//
// It needs root (the driver and the raw floor bind-mount) and a disk-backed
// directory: fsync on tmpfs costs nothing, so figures there mean nothing.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
)

type config struct {
	driver      string
	dir         string
	out         string
	n           int
	concurrency int
	nodeIters   int
	scale       bool
	scaleN      int
	sample      int
	scaleBudget time.Duration
	data        bool
	dataSize    byteSize
	dataOps     int
	dataRuns    int
	metrics     bool
	metricsOnly bool
	metricsN    int
}

func main() {
	os.Exit(run())
}

func run() int {
	cfg := config{dataSize: 1 << 30}
	flag.StringVar(&cfg.driver, "driver", "", "path to the csi-driver binary (required)")
	flag.StringVar(&cfg.dir, "dir", "/var/tmp", "directory on the disk under test; the bench works in a fresh subdirectory")
	flag.StringVar(&cfg.out, "out", "", "also write the results as a markdown table to this file")
	flag.IntVar(&cfg.n, "n", 1000, "create+delete pairs per controller measurement, and durable-floor iterations")
	flag.IntVar(&cfg.concurrency, "concurrency", 8, "concurrency of the parallel controller measurement")
	flag.IntVar(&cfg.nodeIters, "node-iters", 2000, "publish+unpublish iterations, and raw mount+unmount iterations")
	flag.BoolVar(&cfg.scale, "scale", true, "measure with --scale-n volumes in the pool (skipped if the estimated fill time exceeds --scale-budget)")
	flag.IntVar(&cfg.scaleN, "scale-n", 10000, "volumes in the pool for the scale measurements")
	flag.IntVar(&cfg.sample, "sample", 500, "create+delete pairs timed at the small and the large pool size")
	flag.DurationVar(&cfg.scaleBudget, "scale-budget", 10*time.Minute, "longest acceptable estimated time to fill the pool to --scale-n")
	flag.BoolVar(&cfg.data, "data", true, "measure the data path: a host directory against an image and a quota volume")
	flag.Var(&cfg.dataSize, "data-size", "size of the file each data run writes and reads (1GiB, 512MiB...)")
	flag.IntVar(&cfg.dataOps, "data-ops", 20000, "4 KiB operations of each random data workload")
	flag.IntVar(&cfg.dataRuns, "data-runs", 3, "times each directory runs the data workloads, interleaved; medians are reported")
	flag.BoolVar(&cfg.metrics, "metrics", true, "measure GET /metrics (series, scrape time, RSS) with --metrics-n volumes, in a driver of its own")
	flag.BoolVar(&cfg.metricsOnly, "metrics-only", false, "measure only GET /metrics")
	flag.IntVar(&cfg.metricsN, "metrics-n", 10000, "volumes in the pool for the metrics measurement")
	flag.Parse()
	if err := cfg.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		flag.Usage()
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var rep report
	err := bench(ctx, cfg, &rep)
	if werr := rep.writeText(os.Stdout); werr != nil && err == nil {
		err = werr
	}
	if err == nil && cfg.out != "" {
		err = writeMarkdownFile(cfg.out, &rep)
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "bench: interrupted; the figures above are partial")
		return 130
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	return 0
}

func (c *config) validate() error {
	switch {
	case c.driver == "":
		return fmt.Errorf("--driver is required")
	case c.n < 1 || c.concurrency < 1 || c.nodeIters < 1 || c.sample < 1:
		return fmt.Errorf("--n, --concurrency, --node-iters and --sample must be positive")
	case c.scale && c.scaleN < smallPool+1:
		return fmt.Errorf("--scale-n must exceed %d", smallPool)
	case (c.metrics || c.metricsOnly) && c.metricsN < metricsSmall+1:
		return fmt.Errorf("--metrics-n must exceed %d", metricsSmall)
	case c.data:
		return c.validateData()
	}
	return nil
}

// validateData checks the data path's flags.
func (c *config) validateData() error {
	switch {
	case c.dataSize < 1<<20 || c.dataSize%ioBlock != 0:
		return fmt.Errorf("--data-size must be at least 1MiB and a multiple of %d", ioBlock)
	case c.dataOps < 1:
		return fmt.Errorf("--data-ops must be positive")
	case c.dataRuns < 1:
		return fmt.Errorf("--data-runs must be at least 1, got %d", c.dataRuns)
	}
	return nil
}

func writeMarkdownFile(path string, rep *report) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := rep.writeMarkdown(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// smallPool is the pool size at which the per-call cost is first measured.
const smallPool = 100

// warmPairs are run, unrecorded, before each timed loop.
const warmPairs = 20

// controllerBlocks is how many turns the durable floor and the two
// controller loops take.
const controllerBlocks = 10

const (
	sCtrl  = "controller"
	sNode  = "node"
	sScale = "scale"
)

// progress tells the operator what is being measured; results go to stdout.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func bench(ctx context.Context, cfg config, rep *report) (err error) {
	bin, err := filepath.Abs(cfg.driver)
	if err != nil {
		return err
	}
	if st, err := os.Stat(bin); err != nil {
		return err
	} else if st.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not executable", bin)
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("the bench needs root: the driver and the raw floor bind-mount")
	}
	fsType, inMemory, err := fsName(cfg.dir)
	if err != nil {
		return err
	}
	if inMemory {
		return fmt.Errorf("%s is on %s, where fsync is free; choose a disk-backed --dir", cfg.dir, fsType)
	}
	root, err := os.MkdirTemp(cfg.dir, "berth-bench-")
	if err != nil {
		return err
	}
	defer func() {
		if rerr := removeTree(root); rerr != nil {
			fmt.Fprintf(os.Stderr, "bench: clean-up: %v\n", rerr)
			if err == nil {
				err = rerr
			}
		}
	}()

	var uts unix.Utsname
	_ = unix.Uname(&uts)
	rep.env("date", time.Now().UTC().Format(time.RFC3339))
	rep.env("kernel", unix.ByteSliceToString(uts.Release[:]))
	rep.env("CPUs", fmt.Sprint(runtime.NumCPU()))
	rep.env("file system", fmt.Sprintf("%s (%s)", fsType, cfg.dir))
	rep.env("bench built with", runtime.Version())
	rep.env("parameters", fmt.Sprintf("n=%d concurrency=%d node-iters=%d scale-n=%d sample=%d",
		cfg.n, cfg.concurrency, cfg.nodeIters, cfg.scaleN, cfg.sample))
	if cfg.data {
		rep.env("data path", dataParams(cfg))
	}

	if cfg.metricsOnly {
		return benchMetrics(ctx, cfg, bin, filepath.Join(root, "metrics"), rep)
	}
	d, err := newDriver(bin, root)
	if err != nil {
		return err
	}
	defer func() {
		// d changes on restart: stop whichever process is current.
		d.stop(10 * time.Second)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: driver log tail:\n%s\n", d.logTail(20))
		}
	}()

	progress("starting %s on an empty pool under %s", bin, root)
	ready, err := d.start(ctx)
	if err != nil {
		return err
	}
	rep.check(sCtrl, "start-up to ready, empty pool", fmtDur(ready), "≤ 1 s", ready <= time.Second)

	// a and b. Controller throughput against the durable floor. The three
	// loops take turns in blocks, so that each sees the disk in the same
	// moods (cloud disks have bursts and stalls); the page cache other
	// programs dirtied (the bench's own build) is flushed first, lest the
	// first loop's fsyncs pay for it.
	floor, err := newDurableFloor(filepath.Join(root, "floor"))
	if err != nil {
		return err
	}
	defer floor.close()
	if _, err := floor.run(ctx, "warm", warmPairs); err != nil {
		return err
	}
	if _, _, err := createDeletePairs(ctx, d.ctrl, "warm", warmPairs, 1); err != nil {
		return err
	}
	unix.Sync()
	var (
		floorTime, t1, tc time.Duration
		lat1              []time.Duration
	)
	for b := range controllerBlocks {
		n := cfg.n/controllerBlocks + min(1, max(0, cfg.n%controllerBlocks-b)) // blocks sum to n
		progress("controller, block %d/%d: %d pairs each on the durable floor, at C=1 and at C=%d",
			b+1, controllerBlocks, n, cfg.concurrency)
		ft, err := floor.run(ctx, fmt.Sprintf("floor%d", b), n)
		if err != nil {
			return err
		}
		bt1, blat1, err := createDeletePairs(ctx, d.ctrl, fmt.Sprintf("c1b%d", b), n, 1)
		if err != nil {
			return err
		}
		btc, _, err := createDeletePairs(ctx, d.ctrl, fmt.Sprintf("cnb%d", b), n, cfg.concurrency)
		if err != nil {
			return err
		}
		progress("  floor %.0f, C=1 %.0f, C=%d %.0f pairs/s", rate(n, ft), rate(n, bt1), cfg.concurrency, rate(n, btc))
		floorTime, t1, tc = floorTime+ft, t1+bt1, tc+btc
		lat1 = append(lat1, blat1...)
	}
	floorRate := rate(cfg.n, floorTime)
	rate1, rateC := rate(cfg.n, t1), rate(cfg.n, tc)
	rep.info(sCtrl, "durable floor, single-threaded (4 fsyncs per pair)", fmt.Sprintf("%.0f pairs/s", floorRate))
	rep.info(sCtrl, "create+delete, C=1", fmt.Sprintf("%.0f pairs/s", rate1))
	s1 := summarize(lat1)
	rep.info(sCtrl, "create+delete pair latency, C=1, p50 / p99", fmtDur(s1.p50)+" / "+fmtDur(s1.p99))
	rep.info(sCtrl, fmt.Sprintf("create+delete, C=%d", cfg.concurrency), fmt.Sprintf("%.0f pairs/s", rateC))
	r := ratio(rateC, floorRate)
	rep.check(sCtrl, fmt.Sprintf("C=%d ÷ durable floor", cfg.concurrency), fmt.Sprintf("%.2f", r), "≥ 1", r >= 1)
	rep.info(sCtrl, "C=1 ÷ durable floor", fmt.Sprintf("%.2f", ratio(rate1, floorRate)))
	r = ratio(rateC, rate1)
	rep.check(sCtrl, fmt.Sprintf("C=%d ÷ C=1", cfg.concurrency), fmt.Sprintf("%.2f", r), "> 1", r > 1)

	// c. Node publish latency against a raw bind mount.
	if err := benchNode(ctx, cfg, d, root, rep); err != nil {
		return err
	}
	if cur, _, err := d.rss(); err == nil {
		rep.info(sNode, "driver RSS after the controller and node runs", fmtMiB(cur))
	}

	// The data path: what a pod writing through a volume gets.
	if cfg.data {
		if _, err := benchData(ctx, cfg, bin, root, rep); err != nil {
			return fmt.Errorf("data path: %w", err)
		}
		if err := benchLoopFloor(ctx, cfg, root, rep); err != nil {
			return fmt.Errorf("data path: %w", err)
		}
	} else {
		rep.skip(sData, "data path", "", "disabled by --data=false")
	}

	// Snapshots: reflink and the copy fallback against tar (snapshot.go).
	if err := benchSnapshots(ctx, bin, root, rep); err != nil {
		return fmt.Errorf("snapshots: %w", err)
	}

	// GET /metrics, in a driver of its own.
	if cfg.metrics {
		if err := benchMetrics(ctx, cfg, bin, filepath.Join(root, "metrics"), rep); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	} else {
		rep.skip(sMetrics, "metrics", "", "disabled by --metrics=false")
	}

	// a (per-call cost) and d. Scale.
	if !cfg.scale {
		rep.skip(sScale, "per-call cost flatness, restart, RSS", "", "disabled by --scale=false")
		return nil
	}
	if est := time.Duration(float64(cfg.scaleN) / rateC * float64(time.Second)); est > cfg.scaleBudget {
		why := fmt.Sprintf("filling %d volumes would take about %s (> --scale-budget %s)", cfg.scaleN, est.Round(time.Second), cfg.scaleBudget)
		rep.skip(sScale, "per-call cost flatness, restart, RSS", "", why)
		return nil
	}
	return benchScale(ctx, cfg, &d, rep)
}

func benchNode(ctx context.Context, cfg config, d *driver, root string, rep *report) error {
	// The raw floors bind-mount from the pool's file system to targets under
	// the kubelet directory, as the driver does.
	src := filepath.Join(root, "rawmount-src")
	if err := os.MkdirAll(src, 0o750); err != nil {
		return err
	}
	progress("node: %d publish+unpublish iterations, each beside the raw floors", cfg.nodeIters)
	lat, err := publishLoop(ctx, d, src, warmPairs, cfg.nodeIters)
	if err != nil {
		return err
	}
	// What one call costs before the driver does anything: the part of the
	// ratio no handler can remove.
	rtt, err := probeLatencies(ctx, d, cfg.nodeIters)
	if err != nil {
		return err
	}
	pub, unpub, pair := summarize(lat.publish), summarize(lat.unpublish), summarize(lat.pair)
	raw, full, probe := summarize(lat.raw), summarize(lat.rawFull), summarize(rtt)
	rep.info(sNode, "NodePublishVolume p50 / p99", fmtDur(pub.p50)+" / "+fmtDur(pub.p99))
	rep.info(sNode, "NodeUnpublishVolume p50 / p99", fmtDur(unpub.p50)+" / "+fmtDur(unpub.p99))
	rep.info(sNode, "publish+unpublish p50 / p99", fmtDur(pair.p50)+" / "+fmtDur(pair.p99))
	rep.info(sNode, "raw bind mount+unmount p50 / p99", fmtDur(raw.p50)+" / "+fmtDur(raw.p99))
	rep.info(sNode, "raw mkdir+bind+remount+unmount+rmdir p50 / p99", fmtDur(full.p50)+" / "+fmtDur(full.p99))
	rep.info(sNode, "gRPC round trip (Probe) p50 / p99", fmtDur(probe.p50)+" / "+fmtDur(probe.p99))
	// The figure: one NodePublishVolume (over the socket) against one raw bind
	// mount + unmount. The pair ratio below also charges the spec's rmdir of the target.
	r := ratio(float64(pub.p50), float64(raw.p50))
	rep.check(sNode, "NodePublishVolume p50 ÷ raw bind+unmount p50", fmt.Sprintf("%.2f", r), "≤ 2", r <= 2)
	rep.info(sNode, "(NodePublishVolume − 1 round trip) p50 ÷ raw bind+unmount p50", fmt.Sprintf("%.2f", ratio(float64(pub.p50-probe.p50), float64(raw.p50))))
	rep.info(sNode, "publish+unpublish p50 ÷ raw bind+unmount p50", fmt.Sprintf("%.2f", ratio(float64(pair.p50), float64(raw.p50))))
	rep.info(sNode, "publish+unpublish p99 ÷ raw bind+unmount p99", fmt.Sprintf("%.2f", ratio(float64(pair.p99), float64(raw.p99))))
	rep.info(sNode, "publish+unpublish p50 ÷ raw mkdir…rmdir p50", fmt.Sprintf("%.2f", ratio(float64(pair.p50), float64(full.p50))))
	// Approximate: a difference of medians, not a median of differences.
	inHandlers := pair.p50 - 2*probe.p50
	rep.info(sNode, "(publish+unpublish − 2 round trips) p50 ÷ raw mkdir…rmdir p50", fmt.Sprintf("%.2f", ratio(float64(inHandlers), float64(full.p50))))

	// Each call against what it cannot avoid: one empty call on the same socket
	// (NodeGetCapabilities, sampled in the same loop) and the raw syscalls of its
	// half of the work, with as much again for the checks the spec asks for.
	empty, rawPub, rawUnpub := summarize(lat.emptyRPC), summarize(lat.rawPublish), summarize(lat.rawUnpublish)
	pubBudget, unpubBudget := empty.p50+2*rawPub.p50, empty.p50+2*rawUnpub.p50
	rep.info(sNode, "empty call (NodeGetCapabilities) p50 / p99", fmtDur(empty.p50)+" / "+fmtDur(empty.p99))
	rep.info(sNode, "raw publish (mkdir+bind+remount) p50 / p99", fmtDur(rawPub.p50)+" / "+fmtDur(rawPub.p99))
	rep.info(sNode, "raw unpublish (unmount+rmdir) p50 / p99", fmtDur(rawUnpub.p50)+" / "+fmtDur(rawUnpub.p99))
	rp, ru := ratio(float64(pub.p50), float64(pubBudget)), ratio(float64(unpub.p50), float64(unpubBudget))
	rep.check(sNode, "NodePublishVolume p50 ÷ (empty call + 2× raw publish) p50", fmt.Sprintf("%.2f", rp), "≤ 1", rp <= 1)
	rep.check(sNode, "NodeUnpublishVolume p50 ÷ (empty call + 2× raw unpublish) p50", fmt.Sprintf("%.2f", ru), "≤ 1", ru <= 1)
	again := summarize(lat.republish)
	rep.info(sNode, "NodePublishVolume, already published there, p50 / p99", fmtDur(again.p50)+" / "+fmtDur(again.p99))
	for _, f := range []struct {
		name string
		d    time.Duration
	}{
		{"empty-rpc-p50", empty.p50},
		{"raw-publish-p50", rawPub.p50},
		{"publish-p50", pub.p50},
		{"raw-unpublish-p50", rawUnpub.p50},
		{"unpublish-p50", unpub.p50},
		{"republish-p50", again.p50},
		{"publish-budget", pubBudget},
		{"unpublish-budget", unpubBudget},
	} {
		rep.figure(f.name, fmt.Sprintf("%.1f", float64(f.d)/float64(time.Microsecond)), "us")
	}
	rep.figure("publish-over-budget", fmt.Sprintf("%.3f", rp), "x")
	rep.figure("unpublish-over-budget", fmt.Sprintf("%.3f", ru), "x")
	return nil
}

// benchScale measures the per-call cost with a small and a large pool, then
// restarts the driver on the large pool. *dp is replaced by the restarted
// driver so that the caller stops the live one.
func benchScale(ctx context.Context, cfg config, dp **driver, rep *report) error {
	d := *dp
	progress("scale: creating %d volumes", smallPool)
	if _, err := createVolumes(ctx, d.ctrl, "keep", 0, smallPool, cfg.concurrency); err != nil {
		return err
	}
	progress("scale: %d create+delete pairs with %d volumes in the pool", cfg.sample, smallPool)
	_, latSmall, err := createDeletePairs(ctx, d.ctrl, "small", cfg.sample, 1)
	if err != nil {
		return err
	}
	progress("scale: creating %d more volumes", cfg.scaleN-smallPool)
	tFill, err := createVolumes(ctx, d.ctrl, "keep", smallPool, cfg.scaleN, cfg.concurrency)
	if err != nil {
		return err
	}
	progress("scale: %d create+delete pairs with %d volumes in the pool", cfg.sample, cfg.scaleN)
	_, latLarge, err := createDeletePairs(ctx, d.ctrl, "large", cfg.sample, 1)
	if err != nil {
		return err
	}
	// The median pair, halved: one create or delete. The median shrugs off
	// the occasional journal stall that would swing a mean.
	small := summarize(latSmall).p50 / 2
	large := summarize(latLarge).p50 / 2
	rep.info(sScale, fmt.Sprintf("fill to %d volumes, C=%d", cfg.scaleN, cfg.concurrency),
		fmt.Sprintf("%.0f creates/s", rate(cfg.scaleN-smallPool, tFill)))
	rep.info(sScale, fmt.Sprintf("per-call cost (p50 pair ÷ 2), C=1, %d volumes", smallPool), fmtDur(small))
	rep.info(sScale, fmt.Sprintf("per-call cost (p50 pair ÷ 2), C=1, %d volumes", cfg.scaleN), fmtDur(large))
	r := ratio(float64(large), float64(small))
	rep.check(sScale, fmt.Sprintf("per-call cost at %d ÷ at %d", cfg.scaleN, smallPool), fmt.Sprintf("%.2f", r), "≤ 1.5 (flat)", r <= 1.5)

	progress("scale: restarting the driver with %d volumes", cfg.scaleN)
	down, graceful := d.stop(10 * time.Second)
	rep.check(sScale, "exit on SIGTERM", fmtDur(down), "≤ 10 s, graceful", graceful)
	nd, err := newDriver(d.bin, filepath.Dir(d.config))
	if err != nil {
		return err
	}
	*dp = nd
	ready, err := nd.start(ctx)
	if err != nil {
		return err
	}
	cur, peak, rerr := nd.rss()
	rep.check(sScale, fmt.Sprintf("start-up to ready, %d volumes", cfg.scaleN), fmtDur(ready), "≤ 1 s", ready <= time.Second)
	if rerr != nil {
		return rerr
	}
	rep.check(sScale, "driver RSS after ready", fmtMiB(cur), "≤ 40 MiB", cur <= 40<<20)
	rep.info(sScale, "driver peak RSS (VmHWM) at ready", fmtMiB(peak))

	caps, err := nd.controllerCaps(ctx)
	if err != nil {
		return err
	}
	if !caps[csi.ControllerServiceCapability_RPC_LIST_VOLUMES] {
		rep.skip(sScale, "volumes listed after restart", "", "driver does not advertise LIST_VOLUMES")
		return nil
	}
	n, err := nd.countVolumes(ctx)
	if err != nil {
		return err
	}
	rep.check(sScale, "volumes listed after restart", fmt.Sprint(n), fmt.Sprintf("= %d", cfg.scaleN), n == cfg.scaleN)
	return nil
}

func fmtMiB(b int64) string {
	return strings.TrimSuffix(fmt.Sprintf("%.1f", float64(b)/(1<<20)), ".0") + " MiB"
}
