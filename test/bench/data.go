package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/berth-csi/berth/pkg/storage/loop"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/status"
)

const sData = "data"

// Targets of the data path: what a pod would write through, against the
// host directory the pools live on.
const (
	imageFloor = 0.9  // image volume ÷ host, per workload
	quotaFloor = 0.98 // quota volume ÷ host, per workload
)

// dataTarget is a directory the workloads run in, or the reason there is none.
type dataTarget struct {
	name  string
	dir   string
	na    string       // set when the target cannot be measured: "n/a: why"
	after func() error // run after each run of the workloads
	runs  []dataResult
}

// dataTargets are the three directories of the data path and their runs.
type dataTargets struct{ host, image, quota *dataTarget }

// benchData measures the data path: the workloads of dataio.go in a host
// directory beside the pools, in an image volume and in a quota volume, each
// staged and published by a driver of its own and written through the
// publish target, as a pod would. The runs take turns, in alternating order
// (host, image; image, host; ...), so that the machine's moods hit each alike.
// It adds the figures to rep and returns the runs behind them.
func benchData(ctx context.Context, cfg config, bin, root string, rep *report) (figs dataTargets, err error) {
	dataRoot := filepath.Join(root, "data")
	host := &dataTarget{name: "host", dir: filepath.Join(dataRoot, "host")}
	if err := os.MkdirAll(host.dir, 0o750); err != nil {
		return figs, err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(host.dir, &st); err != nil {
		return figs, err
	}
	// The host file and the image's backing file coexist; the quota volume's
	// file comes after the host's is removed.
	if need := 3 * int64(cfg.dataSize); int64(st.Bavail)*st.Bsize < need {
		return figs, fmt.Errorf("the data bench needs %s free in %s, which has %s: lower --data-size",
			fmtMiB(need), cfg.dir, fmtMiB(int64(st.Bavail)*st.Bsize))
	}
	// Room for the file and the file system's own structures (ext4's journal
	// and inode tables take about 5%).
	volSize := int64(cfg.dataSize) + int64(cfg.dataSize)/4 + 128<<20

	progress("data: staging and publishing an image volume (ext4) of %s", fmtMiB(volSize))
	image := &dataTarget{name: "image (ext4)"}
	iv, err := startVolumeDriver(ctx, bin, filepath.Join(dataRoot, "image"), "image", true)
	if err == nil {
		err = iv.provision(ctx, "bench-data-image", volSize)
	}
	defer func() {
		if cerr := iv.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err != nil {
		return figs, fmt.Errorf("image volume: %w", err)
	}
	image.dir = iv.target
	image.after = func() error { return trim(iv.target) }

	progress("data: asking for a quota volume")
	quota := &dataTarget{name: "quota"}
	qv, err := startVolumeDriver(ctx, bin, filepath.Join(dataRoot, "quota"), "quota", false)
	if err == nil {
		err = qv.provision(ctx, "bench-data-quota", volSize)
	}
	defer func() {
		if cerr := qv.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	switch {
	case ctx.Err() != nil:
		return figs, ctx.Err()
	case err != nil:
		// The driver's whole explanation goes in the header; the rows
		// carry its first clause.
		why := quotaReason(err)
		short, _, _ := strings.Cut(why, ": ")
		quota.na = "n/a: " + short
		rep.env("quota volume", "n/a: "+why)
		progress("data: no quota volume: %s", why)
		err = nil
	default:
		quota.dir = qv.target
	}

	targets := []*dataTarget{host, image}
	if quota.na == "" {
		targets = append(targets, quota)
	}
	load := dataLoad{size: int64(cfg.dataSize), ops: cfg.dataOps, seed: 0x6265727468}
	for run := range cfg.dataRuns {
		order := slices.Clone(targets)
		if run%2 == 1 {
			slices.Reverse(order)
		}
		for _, tg := range order {
			progress("data, run %d/%d: %s (%s file, %d random ops)", run+1, cfg.dataRuns, tg.name, fmtMiB(load.size), load.ops)
			res, err := runData(ctx, tg.dir, load, run)
			if err != nil {
				return figs, fmt.Errorf("%s: %w", tg.name, err)
			}
			progress("  %.0f MB/s write, %.0f MB/s read, %.0f IOPS random write, %.0f IOPS random read",
				res.seqWrite, res.seqRead, res.randWrite, res.randRead)
			tg.runs = append(tg.runs, res)
			if tg.after != nil {
				if err := tg.after(); err != nil {
					return figs, fmt.Errorf("%s: %w", tg.name, err)
				}
			}
		}
	}
	reportData(rep, host, image, quota)
	return dataTargets{host, image, quota}, nil
}

// quotaReason is the driver's word on why it made no quota volume.
func quotaReason(err error) string {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		return se.GRPCStatus().Message()
	}
	return err.Error()
}

// dataWorkloads are the report's rows, in order; key names a workload in
// benchmark metrics, which allow no spaces.
var dataWorkloads = []struct {
	name, key, unit string
	get             func(dataResult) float64
}{
	{"sequential write, fsync at end", "seqwrite", "MB/s", func(r dataResult) float64 { return r.seqWrite }},
	{"sequential read, cold cache", "seqread", "MB/s", func(r dataResult) float64 { return r.seqRead }},
	{"random 4 KiB write, fsync at end", "randwrite", "IOPS", func(r dataResult) float64 { return r.randWrite }},
	{"random 4 KiB read, cold cache, QD1", "randread", "IOPS", func(r dataResult) float64 { return r.randRead }},
}

func reportData(rep *report, host, image, quota *dataTarget) {
	for _, w := range dataWorkloads {
		h := summarizeRuns(host.runs, w.get)
		rep.info(sData, w.name+", host", h.format(w.unit))
		i := summarizeRuns(image.runs, w.get)
		rep.info(sData, w.name+", "+image.name, i.format(w.unit))
		r := ratio(i.median, h.median)
		rep.check(sData, w.name+", image ÷ host", fmt.Sprintf("%.2f", r), fmt.Sprintf("≥ %.2g", imageFloor), r >= imageFloor)
		if quota.na != "" {
			rep.skip(sData, w.name+", quota", "", quota.na)
			rep.skip(sData, w.name+", quota ÷ host", fmt.Sprintf("≥ %.2g", quotaFloor), quota.na)
			continue
		}
		q := summarizeRuns(quota.runs, w.get)
		rep.info(sData, w.name+", quota", q.format(w.unit))
		r = ratio(q.median, h.median)
		rep.check(sData, w.name+", quota ÷ host", fmt.Sprintf("%.2f", r), fmt.Sprintf("≥ %.2g", quotaFloor), r >= quotaFloor)
	}
}

// runSummary is the median and range of one figure over the runs.
type runSummary struct{ median, lo, hi float64 }

func summarizeRuns(runs []dataResult, get func(dataResult) float64) runSummary {
	vs := make([]float64, len(runs))
	for i, r := range runs {
		vs[i] = get(r)
	}
	return summarizeValues(vs)
}

// summarizeValues sorts vs in place and returns its median and range.
func summarizeValues(vs []float64) runSummary {
	slices.Sort(vs)
	if len(vs) == 0 {
		return runSummary{}
	}
	// The lower median for an even count: never flattering.
	return runSummary{median: vs[(len(vs)-1)/2], lo: vs[0], hi: vs[len(vs)-1]}
}

func (s runSummary) format(unit string) string {
	return fmt.Sprintf("%.0f %s (runs %.0f–%.0f)", s.median, unit, s.lo, s.hi)
}

// volumeDriver is a driver serving one pool, and the volume the bench
// writes through.
type volumeDriver struct {
	d               *driver
	dir             string
	pool            string // the pool's directory
	poolName        string
	id              string
	staging, target string
	staged          bool
	published       bool
}

// startVolumeDriver starts a driver on one pool of kind under dir. With
// needReady it waits until the driver is ready; otherwise until it answers,
// since a driver with a pool it cannot serve is never ready.
func startVolumeDriver(ctx context.Context, bin, dir, kind string, needReady bool) (*volumeDriver, error) {
	v := &volumeDriver{dir: dir, pool: filepath.Join(dir, "pool"), poolName: "bench-" + kind}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return v, err
	}
	cfg := fmt.Sprintf("pools:\n- name: %s\n  path: %s\n  kind: %s\n  reservedBytes: 0\n", v.poolName, strconv.Quote(v.pool), kind)
	d, err := newDriverWith(bin, dir, cfg)
	if err != nil {
		return v, err
	}
	v.d = d
	if _, err := d.startUntil(ctx, needReady); err != nil {
		return v, err
	}
	return v, nil
}

// provision creates the volume, then stages and publishes it as kubelet
// would, at paths shaped like kubelet's.
func (v *volumeDriver) provision(ctx context.Context, name string, size int64) error {
	resp, err := v.d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name:               name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{mountCapability},
		Parameters:         map[string]string{"pool": v.poolName},
	})
	if err != nil {
		return fmt.Errorf("CreateVolume in pool %s: %w", v.poolName, err)
	}
	v.id = resp.GetVolume().GetVolumeId()
	vctx := resp.GetVolume().GetVolumeContext()
	v.staging = filepath.Join(v.d.kubelet, "plugins", "kubernetes.io", "csi", "berth", name, "globalmount")
	v.target = filepath.Join(v.d.kubelet, "pods", "00000000-bench-data", "volumes", "kubernetes.io~csi", name, "mount")
	for _, p := range []string{filepath.Dir(v.staging), filepath.Dir(v.target)} {
		if err := os.MkdirAll(p, 0o750); err != nil {
			return err
		}
	}
	caps, err := v.d.nodeCaps(ctx)
	if err != nil {
		return err
	}
	pub := &csi.NodePublishVolumeRequest{VolumeId: v.id, TargetPath: v.target, VolumeCapability: mountCapability, VolumeContext: vctx}
	if caps[csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME] {
		if _, err := v.d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
			VolumeId: v.id, StagingTargetPath: v.staging, VolumeCapability: mountCapability, VolumeContext: vctx,
		}); err != nil {
			return fmt.Errorf("NodeStageVolume: %w", err)
		}
		v.staged = true
		pub.StagingTargetPath = v.staging
	}
	if _, err := v.d.node.NodePublishVolume(ctx, pub); err != nil {
		return fmt.Errorf("NodePublishVolume: %w", err)
	}
	v.published = true
	return nil
}

// close unpublishes, unstages and deletes the volume and stops the driver;
// then, whatever failed, it unmounts everything under the driver's directory
// and detaches every loop device backed by its pool.
func (v *volumeDriver) close() error {
	if v == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var errs []error
	if v.d != nil && v.d.running() {
		if v.published {
			_, err := v.d.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target})
			errs = append(errs, wrapCall("NodeUnpublishVolume", err))
		}
		if v.staged {
			_, err := v.d.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging})
			errs = append(errs, wrapCall("NodeUnstageVolume", err))
		}
		if v.id != "" {
			_, err := v.d.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id})
			errs = append(errs, wrapCall("DeleteVolume", err))
		}
	}
	if v.d != nil {
		if _, graceful := v.d.stop(10 * time.Second); !graceful {
			errs = append(errs, fmt.Errorf("driver in %s did not exit within 10 s of SIGTERM", v.dir))
		}
	}
	errs = append(errs, unmountUnder(v.dir))
	devs, err := loop.List(v.pool)
	errs = append(errs, err)
	for _, d := range devs {
		errs = append(errs, fmt.Errorf("loop device %s still backed by %s after the unstage", d.Path, d.BackingFile), loop.Detach(d))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean-up of %s: %w", v.dir, err)
	}
	return nil
}

func wrapCall(call string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", call, err)
}

// dataParams describes the data bench for the report's header.
func dataParams(cfg config) string {
	return fmt.Sprintf("%s file, %d random 4 KiB ops, %d interleaved runs per directory, medians; "+
		"cold reads after sync + drop_caches; image volumes trimmed between runs",
		cfg.dataSize.String(), cfg.dataOps, cfg.dataRuns)
}
