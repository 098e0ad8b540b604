package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"golang.org/x/sys/unix"
)

// The data path where the kernel can enforce project quotas: in the QEMU
// guest of hack/vmtest.sh (make bench-quota-vm) when this machine's kernel
// cannot. The file is small, for the guest's memory (its /tmp is a tmpfs);
// the runs are many, for a noisy emulated CPU.
var (
	vmDriver   = flag.String("data-driver", "", "absolute path to the csi-driver binary for BenchmarkDataPathQuota")
	vmDataSize = byteSize(256 << 20)
	vmDataOps  = flag.Int("data-ops", 20000, "4 KiB operations of each random workload of BenchmarkDataPathQuota")
	vmDataRuns = flag.Int("data-runs", 7, "interleaved runs per directory of BenchmarkDataPathQuota")
)

func init() {
	flag.Var(&vmDataSize, "data-size", "size of the file each run of BenchmarkDataPathQuota writes and reads")
}

// vmFSSize is the XFS the three directories share: room for the host's
// file and the image's backing file at once (benchData asks for three
// files' worth free), and XFS's log.
func vmFSSize(data int64) int64 { return 4*data + 512<<20 }

// BenchmarkDataPathQuota runs the data path of `make bench` (benchData) with
// the host directory, the image pool and the quota pool on one XFS mounted
// with prjquota, made on a loop file, and reports volume ÷ host per
// workload. It measures once, whatever b.N; it asserts no target (the
// report's PASS/MISS column carries them).
func BenchmarkDataPathQuota(b *testing.B) {
	if *vmDriver == "" {
		b.Skip("no driver: give -data-driver /abs/path/to/csi-driver (make bench-quota-vm does)")
	}
	if !filepath.IsAbs(*vmDriver) {
		b.Fatalf("-data-driver %q must be absolute: the guest sees the host's files at the same paths", *vmDriver)
	}
	cfg := config{driver: *vmDriver, data: true, dataSize: vmDataSize, dataOps: *vmDataOps, dataRuns: *vmDataRuns}
	if err := cfg.validateData(); err != nil {
		b.Fatal(err)
	}
	testutil.RequireQuotaKernel(b)

	mnt := testutil.MountFS(b, testutil.XFSPrjQuota, vmFSSize(int64(cfg.dataSize)))
	cfg.dir = mnt
	// The loop file's own file system: where fsync finally lands.
	backing, inMemory, err := fsName(filepath.Dir(mnt))
	if err != nil {
		b.Fatal(err)
	}
	if inMemory {
		backing += " (memory: no disk under any of the three; fsync and cold reads end in RAM)"
	}
	root, err := os.MkdirTemp(mnt, "berth-bench-")
	if err != nil {
		b.Fatal(err)
	}
	// Registered after MountFS's, so it runs first: volumes and drivers
	// are gone before the file system is unmounted.
	b.Cleanup(func() {
		if err := removeTree(root); err != nil {
			b.Errorf("clean-up: %v", err)
		}
	})

	var rep report
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	rep.env("date", time.Now().UTC().Format(time.RFC3339))
	rep.env("measured in", machine())
	rep.env("kernel", unix.ByteSliceToString(uts.Release[:]))
	rep.env("CPUs", fmt.Sprint(runtime.NumCPU()))
	rep.env("file system", fmt.Sprintf("xfs (reflink, prjquota) of %s on a loop file on %s; host directory, image pool and quota pool all on it",
		fmtMiB(vmFSSize(int64(cfg.dataSize))), backing))
	rep.env("bench built with", runtime.Version())
	rep.env("data path", dataParams(cfg))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.ResetTimer()
	figs, err := benchData(ctx, cfg, cfg.driver, root, &rep)
	b.StopTimer()
	if werr := rep.writeText(os.Stdout); werr != nil {
		b.Error(werr)
	}
	if err != nil {
		b.Fatalf("data path: %v", err)
	}
	if figs.quota.na != "" {
		b.Fatalf("the driver made no quota volume on XFS with prjquota: %s", figs.quota.na)
	}
	for _, w := range dataWorkloads {
		h := summarizeRuns(figs.host.runs, w.get).median
		b.ReportMetric(ratio(summarizeRuns(figs.quota.runs, w.get).median, h), "quota/host-"+w.key)
		b.ReportMetric(ratio(summarizeRuns(figs.image.runs, w.get).median, h), "image/host-"+w.key)
	}
}

// machine names what the figures were measured on, from the firmware's and
// the CPU's own words: under QEMU's TCG the CPU is "QEMU Virtual CPU".
func machine() string {
	var parts []string
	for _, f := range []string{"/sys/class/dmi/id/sys_vendor", "/sys/class/dmi/id/product_name"} {
		if b, err := os.ReadFile(f); err == nil {
			parts = append(parts, strings.TrimSpace(string(b)))
		}
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				parts = append(parts, "CPU "+strings.TrimSpace(v))
				break
			}
		}
	}
	if len(parts) == 0 {
		return "unknown"
	}
	return strings.Join(parts, ", ")
}
