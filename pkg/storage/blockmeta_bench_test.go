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

	var tDelta, tRead, cpuDelta []time.Duration
	var listed int64
	b.ResetTimer()
	for range b.N {
		for range rounds {
			cold()
			cpu0 := cpuTime(b)
			start := time.Now()
			m, err := e.ChangedBlocks(context.Background(), base.ID, target.ID, 0)
			if err != nil {
				b.Fatal(err)
			}
			listed = 0
			if err := m.Walk(context.Background(), func(r storage.BlockRange) error { listed += r.Length / blk; return nil }); err != nil {
				b.Fatal(err)
			}
			m.Close()
			tDelta = append(tDelta, time.Since(start))
			cpuDelta = append(cpuDelta, cpuTime(b)-cpu0)
			b.StopTimer()
			cold()
			start = time.Now()
			for _, f := range files {
				readAll(b, f, buf)
			}
			tRead = append(tRead, time.Since(start))
			b.StartTimer()
		}
	}
	if listed != int64(len(written)) {
		b.Fatalf("delta lists %d blocks, %d were written", listed, len(written))
	}
	d, rd := median(tDelta), median(tRead)
	b.ReportMetric(float64(d.Microseconds()), "delta-µs")
	b.ReportMetric(float64(rd.Microseconds()), "read-both-µs")
	fmt.Printf("figure: cbt-delta-time %.4f s\n", d.Seconds())
	fmt.Printf("figure: cbt-delta-cpu %.4f s\n", median(cpuDelta).Seconds())
	fmt.Printf("figure: cbt-read-both-time %.3f s\n", rd.Seconds())
	fmt.Printf("figure: cbt-delta-over-read-both %.4f x\n", d.Seconds()/rd.Seconds())
	b.Logf("%d MiB image, %d of %d blocks changed, %d listed; delta median %v, read both median %v (%d rounds)",
		size>>20, len(written), nBlocks, listed, d, rd, len(tDelta))
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
