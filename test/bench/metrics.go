package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

const sMetrics = "metrics"

// metricsScrapes is how many scrapes are timed at each pool size.
const metricsScrapes = 20

// metricsSmall is the pool size the scrape time is first measured at.
const metricsSmall = 100

// scrapeFigures are what one pool size's scrapes showed.
type scrapeFigures struct {
	series, berthSeries int // lines with a value: every series, and Berth's own
	bytes               int // the body's size
	p50, max            time.Duration
	before              int64 // the driver's VmRSS before the first scrape
	rss, peak           int64 // the driver's VmRSS after the scrapes, and VmHWM
}

// benchMetrics measures GET /metrics: the driver runs with --metrics-address on a
// loopback port, its pool holds metricsSmall volumes, then cfg.metricsN (each made
// by CreateVolume with the claim metadata the provisioner passes, so every volume
// series carries its namespace and claim labels, as in a cluster, and measured once
// by NodeGetVolumeStats); at each size it times metricsScrapes scrapes, one after
// the other, and reads the driver's own RSS (VmRSS, and VmHWM for the peak) from
// /proc/<pid>/status.
func benchMetrics(ctx context.Context, cfg config, bin, root string, rep *report) (err error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	port, err := loopbackPort()
	if err != nil {
		return err
	}
	d, err := newDriver(bin, root)
	if err != nil {
		return err
	}
	d.args = []string{"--metrics-address", fmt.Sprintf("127.0.0.1:%d", port)}
	defer d.stop(10 * time.Second)
	progress("metrics: starting %s with --metrics-address 127.0.0.1:%d", bin, port)
	if _, err := d.start(ctx); err != nil {
		return err
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
	var small, large scrapeFigures
	for _, step := range []struct {
		n   int
		out *scrapeFigures
	}{{metricsSmall, &small}, {cfg.metricsN, &large}} {
		from, err := d.countVolumes(ctx)
		if err != nil {
			return err
		}
		progress("metrics: filling the pool to %d volumes", step.n)
		if _, err := forEach(ctx, step.n-from, cfg.concurrency, func(ctx context.Context, i int) error {
			return createClaimVolume(ctx, d, from+i)
		}); err != nil {
			return err
		}
		progress("metrics: %d scrapes at %d volumes", metricsScrapes, step.n)
		before, _, err := d.rss()
		if err != nil {
			return err
		}
		if *step.out, err = scrapeMany(ctx, d, url); err != nil {
			return err
		}
		step.out.before = before
	}
	n := cfg.metricsN
	rep.info(sMetrics, fmt.Sprintf("series per scrape, %d volumes (Berth's / all)", metricsSmall), fmt.Sprintf("%d / %d", small.berthSeries, small.series))
	rep.info(sMetrics, fmt.Sprintf("series per scrape, %d volumes (Berth's / all)", n), fmt.Sprintf("%d / %d", large.berthSeries, large.series))
	perVolume := float64(large.berthSeries-small.berthSeries) / float64(n-metricsSmall)
	rep.info(sMetrics, "series per volume", fmt.Sprintf("%.2f", perVolume))
	rep.info(sMetrics, fmt.Sprintf("scrape body, %d volumes", n), fmtMiB(int64(large.bytes)))
	rep.info(sMetrics, fmt.Sprintf("scrape time p50 / max, %d volumes", metricsSmall), fmtDur(small.p50)+" / "+fmtDur(small.max))
	rep.check(sMetrics, fmt.Sprintf("scrape time max, %d volumes", n), fmtDur(large.max), "≤ 1 s", large.max <= time.Second)
	r := ratio(float64(large.p50), float64(small.p50))
	rep.info(sMetrics, fmt.Sprintf("scrape time p50 at %d ÷ at %d (%s / %s)", n, metricsSmall, fmtDur(large.p50), fmtDur(small.p50)), fmt.Sprintf("%.1f", r))
	rep.info(sMetrics, fmt.Sprintf("driver RSS after %d scrapes, %d volumes", metricsScrapes, metricsSmall), fmtMiB(small.rss))
	rep.info(sMetrics, fmt.Sprintf("driver RSS before the first scrape, %d volumes", n), fmtMiB(large.before))
	rep.check(sMetrics, fmt.Sprintf("driver RSS after %d scrapes, %d volumes (peak)", metricsScrapes, n),
		fmtMiB(large.rss)+" ("+fmtMiB(large.peak)+")", "≤ 150 MiB", large.peak <= 150<<20)
	rep.figure("metrics-series-small", fmt.Sprint(small.berthSeries), "series")
	rep.figure("metrics-series-large", fmt.Sprint(large.berthSeries), "series")
	rep.figure("metrics-series-per-volume", fmt.Sprintf("%.2f", perVolume), "series")
	rep.figure("metrics-scrape-p50-small", fmt.Sprintf("%.1f", float64(small.p50)/float64(time.Millisecond)), "ms")
	rep.figure("metrics-scrape-p50-large", fmt.Sprintf("%.1f", float64(large.p50)/float64(time.Millisecond)), "ms")
	rep.figure("metrics-scrape-max-large", fmt.Sprintf("%.1f", float64(large.max)/float64(time.Millisecond)), "ms")
	rep.figure("metrics-scrape-large-over-small", fmt.Sprintf("%.1f", r), "x")
	rep.figure("metrics-rss-small", fmt.Sprintf("%.1f", float64(small.rss)/(1<<20)), "MiB")
	rep.figure("metrics-rss-before-scrapes-large", fmt.Sprintf("%.1f", float64(large.before)/(1<<20)), "MiB")
	rep.figure("metrics-rss-large", fmt.Sprintf("%.1f", float64(large.rss)/(1<<20)), "MiB")
	rep.figure("metrics-rss-peak-large", fmt.Sprintf("%.1f", float64(large.peak)/(1<<20)), "MiB")
	rep.figure("metrics-rss-large-over-small", fmt.Sprintf("%.2f", ratio(float64(large.rss), float64(small.rss))), "x")
	return nil
}

// createClaimVolume creates volume i as the provisioner would for claim
// bench/claim-i (--extra-create-metadata), then asks its stats as the kubelet does
// (the driver keeps the last figures of kinds it cannot measure cheaply at scrape
// time, dir pools: every volume then has all its series, the most it can have).
func createClaimVolume(ctx context.Context, d *driver, i int) error {
	req := createRequest(fmt.Sprintf("pvc-metrics-%06d", i))
	req.Parameters["csi.storage.k8s.io/pvc/namespace"] = "bench"
	req.Parameters["csi.storage.k8s.io/pvc/name"] = fmt.Sprintf("claim-%06d", i)
	req.Parameters["csi.storage.k8s.io/pv/name"] = fmt.Sprintf("pvc-metrics-%06d", i)
	resp, err := d.ctrl.CreateVolume(ctx, req)
	if err != nil {
		return fmt.Errorf("CreateVolume %s: %w", req.Name, err)
	}
	id := resp.GetVolume().GetVolumeId()
	if _, err := d.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: d.kubelet}); err != nil {
		return fmt.Errorf("NodeGetVolumeStats %s: %w", id, err)
	}
	return nil
}

// scrapeMany times metricsScrapes scrapes of url, one after the other.
func scrapeMany(ctx context.Context, d *driver, url string) (scrapeFigures, error) {
	var f scrapeFigures
	client := &http.Client{Timeout: 30 * time.Second}
	var times []time.Duration
	for range metricsScrapes {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return f, err
		}
		begin := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return f, err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return f, err
		}
		if resp.StatusCode != http.StatusOK {
			return f, fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		times = append(times, time.Since(begin))
		f.bytes = len(body)
		f.series, f.berthSeries = countSeries(string(body))
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	f.p50, f.max = percentile(times, 50), times[len(times)-1]
	var err error
	f.rss, f.peak, err = d.rss()
	return f, err
}

// countSeries counts the sample lines of a text exposition: all, and berth_'s.
func countSeries(body string) (all, berth int) {
	for line := range strings.SplitSeq(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		all++
		if strings.HasPrefix(line, "berth_") {
			berth++
		}
	}
	return all, berth
}

// loopbackPort finds a free port on 127.0.0.1.
func loopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
