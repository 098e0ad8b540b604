package transfer

import (
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
)

// BenchmarkTransferTree pulls a tree of 256 MiB (4 files of 32 MiB, 2,000 of 64
// KiB in 20 directories, a sparse file) over the channel on 127.0.0.1, and in the
// same iteration copies it with `cp -a` and with tar over a loopback TCP
// connection (`tar -c | tar -x`), all on one tmpfs, each followed by a syncfs.
// It prints the ratios as "figure:" lines (docs/benchmarks.md):
//
//	sudo go test -run '^$' -bench TransferTree -benchtime 5x ./pkg/transfer/
func BenchmarkTransferTree(b *testing.B) {
	testutil.RequireRoot(b)
	base := filepath.Join(b.TempDir(), "fs")
	testutil.MountTmpfs(b, base, 1536<<20)
	src := filepath.Join(base, "src")
	data := benchTree(b, src)
	n := startServer(b, ServerOptions{})
	n.sources.add("vol", Source{Kind: KindTree, Path: src})
	var tTransfer, tCp, tTar time.Duration
	// timed copies src to base/name with copy, then syncfs, adds the time to d,
	// and removes the copy.
	timed := func(d *time.Duration, name string, copy func(dst string)) {
		dst := filepath.Join(base, name)
		start := time.Now()
		copy(dst)
		syncfs(b, base)
		*d += time.Since(start)
		b.StopTimer()
		if err := safefs.RemoveTree(base, name); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(data)
	b.ResetTimer()
	for range b.N {
		b.StartTimer() // the benchmark's own time is the transfer's
		timed(&tTransfer, "pulled", func(dst string) {
			if _, err := Pull(testContext(b), n.pullOptions(b, "vol", dst)); err != nil {
				b.Fatal(err)
			}
		})
		timed(&tCp, "cp", func(dst string) { testutil.Run(b, "cp", "-a", src, dst) })
		timed(&tTar, "tar", func(dst string) { tarOverTCP(b, src, dst) })
	}
	mibs := func(d time.Duration) float64 { return float64(data) * float64(b.N) / d.Seconds() / (1 << 20) }
	b.ReportMetric(mibs(tTransfer), "transfer-MiB/s")
	b.ReportMetric(mibs(tCp), "cp-MiB/s")
	b.ReportMetric(mibs(tTar), "tar-tcp-MiB/s")
	fmt.Printf("figure: transfer-tree-throughput %.1f MiB/s\n", mibs(tTransfer))
	fmt.Printf("figure: cp-a-tree-throughput %.1f MiB/s\n", mibs(tCp))
	fmt.Printf("figure: tar-tcp-tree-throughput %.1f MiB/s\n", mibs(tTar))
	fmt.Printf("figure: transfer-tree-over-cp-a %.2f x\n", tTransfer.Seconds()/tCp.Seconds())
	fmt.Printf("figure: transfer-throughput-over-tar-tcp %.2f x\n", tTar.Seconds()/tTransfer.Seconds())
}

// benchTree writes the benchmark's tree and returns its bytes of data.
func benchTree(b *testing.B, dir string) int64 {
	var total int64
	for i := range 4 {
		testutil.MkdirAll(b, dir)
		testutil.WriteRandom(b, filepath.Join(dir, "big"+strconv.Itoa(i)), 32<<20)
		total += 32 << 20
	}
	buf := make([]byte, 64<<10)
	for d := range 20 {
		sub := filepath.Join(dir, "d"+strconv.Itoa(d))
		testutil.MkdirAll(b, sub)
		for f := range 100 {
			if _, err := rand.Read(buf); err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(sub, "f"+strconv.Itoa(f)), buf, 0o644); err != nil {
				b.Fatal(err)
			}
			total += int64(len(buf))
		}
	}
	f, err := os.Create(filepath.Join(dir, "sparse"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(buf, 1<<30); err != nil {
		b.Fatal(err)
	}
	return total + int64(len(buf))
}

// tarOverTCP copies src to dst as `tar -c | tar -x` through a loopback TCP
// connection: a plain, unencrypted stream copy, the yardstick.
func tarOverTCP(b *testing.B, src, dst string) {
	testutil.MkdirAll(b, dst)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		x := exec.Command("tar", "-C", dst, "--sparse", "-xpf", "-")
		x.Stdin = c
		out, err := x.CombinedOutput()
		if err != nil {
			err = fmt.Errorf("tar -x: %w: %s", err, out)
		}
		done <- err
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	cr := exec.Command("tar", "-C", src, "--sparse", "-cf", "-", ".")
	out, err := cr.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cr.Start(); err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(c, out); err != nil {
		b.Fatal(err)
	}
	if err := cr.Wait(); err != nil {
		b.Fatal(err)
	}
	c.Close()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

func syncfs(b *testing.B, dir string) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkDeltaPull measures what a resync costs against a full pull when 1%
// of a volume changed: the benchmark tree (256 MiB, 2,000 files of 64 KiB) with
// 40 of its small files rewritten (2.5 MiB), and a 256 MiB image of random data
// with 2.5 MiB rewritten in one chunk; each pulled in full, then its delta
// pulled into that copy, on one tmpfs, each followed by a syncfs. It prints the
// ratios of the delta's time to the full pull's:
//
//	sudo go test -run '^$' -bench DeltaPull -benchtime 3x ./pkg/transfer/
func BenchmarkDeltaPull(b *testing.B) {
	testutil.RequireRoot(b)
	base := filepath.Join(b.TempDir(), "fs")
	testutil.MountTmpfs(b, base, 1536<<20)
	tree, img := filepath.Join(base, "src"), filepath.Join(base, "src.img")
	benchTree(b, tree)
	testutil.WriteRandom(b, img, 256<<20)
	n := startServer(b, ServerOptions{})
	n.sources.add("tree", Source{Kind: KindTree, Path: tree, Generation: "g"})
	n.sources.add("img", Source{Kind: KindImage, Path: img, Generation: "g"})
	change := func(id string) {
		buf := make([]byte, 64<<10)
		if id == "img" {
			buf = make([]byte, 40*64<<10)
		}
		if _, err := rand.Read(buf); err != nil {
			b.Fatal(err)
		}
		if id == "img" {
			f, err := os.OpenFile(img, os.O_WRONLY, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt(buf, 100<<20); err != nil {
				b.Fatal(err)
			}
			return
		}
		for i := range 40 {
			p := filepath.Join(tree, "d"+strconv.Itoa(i%20), "f"+strconv.Itoa(i))
			if err := os.WriteFile(p, buf, 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	var full, delta [2]time.Duration
	var sent, skipped [2]int64
	b.ResetTimer()
	for range b.N {
		for k, id := range []string{"tree", "img"} {
			dst := filepath.Join(base, "pulled-"+id)
			start := time.Now()
			res, err := Pull(testContext(b), n.pullOptions(b, id, dst))
			if err != nil {
				b.Fatal(err)
			}
			syncfs(b, base)
			full[k] += time.Since(start)
			b.StopTimer()
			time.Sleep(ctimeMargin + 100*time.Millisecond)
			change(id)
			b.StartTimer()
			o := n.pullOptions(b, id, "")
			o.Base, o.BaseGeneration, o.BaseSince = dst, res.Generation, res.ServerTime
			start = time.Now()
			dres, err := Pull(testContext(b), o)
			if err != nil {
				b.Fatal(err)
			}
			syncfs(b, base)
			delta[k] += time.Since(start)
			sent[k], skipped[k] = dres.Bytes, dres.SkippedBytes
			b.StopTimer()
			if err := safefs.RemoveTree(base, "pulled-"+id); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
	fmt.Printf("figure: delta-pull-over-full %.3f x\n", delta[0].Seconds()/full[0].Seconds())
	fmt.Printf("figure: delta-pull-over-full-image %.3f x\n", delta[1].Seconds()/full[1].Seconds())
	fmt.Printf("figure: delta-pull-tree-sent %d bytes (%d skipped)\n", sent[0], skipped[0])
	fmt.Printf("figure: delta-pull-image-sent %d bytes (%d skipped)\n", sent[1], skipped[1])
	b.ReportMetric(delta[0].Seconds()/full[0].Seconds(), "tree-delta/full")
	b.ReportMetric(delta[1].Seconds()/full[1].Seconds(), "image-delta/full")
}
