package storage_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"golang.org/x/sys/unix"
)

// BenchmarkChangedBlocks times a delta between two snapshots of an image volume
// written whole with random data, 1% of whose 4 KiB blocks (chosen at random)
// were written again between the snapshots, on XFS with reflinks, against reading
// both snapshots' images whole, in the same run. Each round drops the images'
// page cache (on the snapshots' files and on the loop file under the XFS) before
// each of the two, which it times in turn; it prints the medians' ratio as
// "figure: cbt-delta-over-read-both R x" (docs/benchmarks.md). As root:
//
//	sudo go test -run '^$' -bench ChangedBlocks -benchtime 1x ./pkg/storage/
//	sudo BERTH_BENCH_CBT_MIB=10240 go test -run '^$' -bench ChangedBlocks -benchtime 1x -timeout 60m ./pkg/storage/
//
// BERTH_BENCH_CBT_MIB sets the image's size (1024 MiB), BERTH_BENCH_CBT_ROUNDS the
// rounds (5).
func BenchmarkChangedBlocks(b *testing.B) {
	testutil.RequireRoot(b)
	size := int64(testutil.EnvInt(b, "BERTH_BENCH_CBT_MIB", 1024, 16)) << 20
	rounds := testutil.EnvInt(b, "BERTH_BENCH_CBT_ROUNDS", 5, 1)
	// Sparse: about size is used; each snapshot reserves size against the free space.
	mnt := testutil.MountFS(b, testutil.XFSPlain, 3*size+1<<30)
	loopFile := filepath.Join(filepath.Dir(mnt), "xfs.img")
	// Overcommit: the snapshots share the volume's blocks, but each reserves its size.
	e := startEngine(b, storage.PoolConfig{Name: "default", Path: filepath.Join(mnt, "pool"), Kind: storage.KindImage, Overcommit: true})
	p := e.DefaultPool()
	r, err := p.Create(context.Background(), storage.CreateRequest{Name: "vol", RequiredBytes: size, AccessType: storage.AccessBlock})
	if err != nil {
		b.Fatal(err)
	}
	img, err := os.OpenFile(filepath.Join(p.VolumeDir(r.Hash()), storage.ImageFile), os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	rng := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, 4<<20)
	fillRandom(b, img, size, rng, buf)
	base, err := p.CreateSnapshot(context.Background(), "base", r.Hash())
	if err != nil {
		b.Fatal(err)
	}
	nBlocks := size / blk
	written := map[int64]bool{}
	pick := rand.New(rand.NewPCG(1, 2))
	for int64(len(written)) < nBlocks/100 {
		n := pick.Int64N(nBlocks)
		if written[n] {
			continue
		}
		written[n] = true
		_, _ = rng.Read(buf[:blk])
		if _, err := img.WriteAt(buf[:blk], n*blk); err != nil {
			b.Fatal(err)
		}
	}
	if err := img.Sync(); err != nil {
		b.Fatal(err)
	}
	target, err := p.CreateSnapshot(context.Background(), "target", r.Hash())
	if err != nil {
		b.Fatal(err)
	}
	snapFile := func(s *storage.Snapshot) string {
		return filepath.Join(p.Config().Path, "snapshots", s.Hash(), storage.ImageFile)
	}
	files := []string{snapFile(base), snapFile(target)}
	cold := func() { dropCache(b, append(slices.Clone(files), loopFile)...) }

	var tDelta, tRead, cpuDelta, tBare []time.Duration
	var st, bare deltaRun
	b.ResetTimer()
	for range b.N {
		for range rounds {
			cold()
			st = timeDelta(b, e, base.ID, target.ID)
			tDelta, cpuDelta = append(tDelta, st.took), append(cpuDelta, st.cpu)
			b.StopTimer()
			cold()
			start := time.Now()
			for _, f := range files {
				readAll(b, f, buf)
			}
			tRead = append(tRead, time.Since(start))
			b.StartTimer()
		}
		// The same delta without the snapshots' anchors (snapshotanchor.go), as a
		// snapshot made by an older Berth has none: what they save.
		b.StopTimer()
		for _, s := range []*storage.Snapshot{base, target} {
			if err := os.Remove(filepath.Join(filepath.Dir(snapFile(s)), storage.AnchorFile)); err != nil {
				b.Fatalf("snapshot %s has no anchor: %v", s.ID, err)
			}
		}
		// XFS drops the anchors' references in the background (inodegc): wait,
		// untimed, until the maps show it.
		for deadline := time.Now().Add(time.Minute); timeDelta(b, e, base.ID, target.ID).extents <= st.extents; time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				b.Fatal("the delta maps no more extents a minute after the anchors were removed")
			}
		}
		for range rounds {
			cold()
			bare = timeDelta(b, e, base.ID, target.ID)
			tBare = append(tBare, bare.took)
		}
	}
	for _, r := range []deltaRun{st, bare} {
		if r.listed != int64(len(written)) {
			b.Fatalf("delta lists %d blocks, %d were written", r.listed, len(written))
		}
	}
	d, rd, db := median(tDelta), median(tRead), median(tBare)
	b.ReportMetric(float64(d.Microseconds()), "delta-µs")
	b.ReportMetric(float64(rd.Microseconds()), "read-both-µs")
	fmt.Printf("figure: cbt-delta-time %.4f s\n", d.Seconds())
	fmt.Printf("figure: cbt-delta-cpu %.4f s\n", median(cpuDelta).Seconds())
	fmt.Printf("figure: cbt-delta-extents %d extents\n", st.extents)
	fmt.Printf("figure: cbt-read-both-time %.3f s\n", rd.Seconds())
	fmt.Printf("figure: cbt-delta-over-read-both %.4f x\n", d.Seconds()/rd.Seconds())
	fmt.Printf("figure: cbt-delta-unanchored-time %.4f s\n", db.Seconds())
	fmt.Printf("figure: cbt-delta-unanchored-extents %d extents\n", bare.extents)
	fmt.Printf("figure: cbt-unanchored-over-anchored %.2f x\n", db.Seconds()/d.Seconds())
	b.Logf("%d MiB image, %d of %d blocks changed, %d listed; delta median %v (%d extents), read both median %v, without anchors %v (%d extents) (%d rounds)",
		size>>20, len(written), nBlocks, st.listed, d, st.extents, rd, db, bare.extents, len(tDelta))
}

// deltaRun is one timed delta: its wall and CPU time, the blocks it listed and
// the extents its maps returned.
type deltaRun struct {
	took, cpu time.Duration
	listed    int64
	extents   int
}

// timeDelta lists the blocks changed from base to target, as GetMetadataDelta
// does (ChangedBlocks, then a walk of every range), and times it.
func timeDelta(b *testing.B, e *storage.Engine, base, target string) deltaRun {
	b.Helper()
	cpu0 := cpuTime(b)
	start := time.Now()
	m, err := e.ChangedBlocks(context.Background(), base, target, 0)
	if err != nil {
		b.Fatal(err)
	}
	var r deltaRun
	if err := m.Walk(context.Background(), func(br storage.BlockRange) error { r.listed += br.Length / blk; return nil }); err != nil {
		b.Fatal(err)
	}
	m.Close()
	r.took, r.cpu = time.Since(start), cpuTime(b)-cpu0
	r.extents = m.Stats().Extents
	return r
}

// fillRandom writes size bytes from rng into img, len(buf) at a time, and syncs it.
func fillRandom(b *testing.B, img *os.File, size int64, rng *rand.ChaCha8, buf []byte) {
	b.Helper()
	for off := int64(0); off < size; off += int64(len(buf)) {
		_, _ = rng.Read(buf)
		if _, err := img.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := img.Sync(); err != nil {
		b.Fatal(err)
	}
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// dropCache writes back and drops the page cache of files.
func dropCache(b *testing.B, files ...string) {
	b.Helper()
	for _, path := range files {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}

func readAll(b *testing.B, path string, buf []byte) {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	for {
		_, err := f.Read(buf)
		if err == io.EOF {
			return
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
