package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"time"
	"unsafe"

	"github.com/berth-csi/berth/pkg/storage/loop"
	"golang.org/x/sys/unix"
)

// benchLoopFloor measures what a loop device alone costs random I/O: O_DIRECT
// 4 KiB reads at QD1, and the data path's random writes (buffered, fsync at the
// end), on a file in the host directory against a direct-I/O loop device backed
// by that file, runs interleaved. No filesystem sits on the device, so the
// ratios bound what an image volume's random I/O can reach on this disk.
func benchLoopFloor(ctx context.Context, cfg config, root string, rep *report) (err error) {
	dir := filepath.Join(root, "data", "loop-floor")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	defer func() {
		if rerr := os.RemoveAll(dir); rerr != nil && err == nil {
			err = rerr
		}
	}()
	file := filepath.Join(dir, "backing")
	progress("data: loop device floor (%s file, %d O_DIRECT random reads per run)", fmtMiB(int64(cfg.dataSize)), cfg.dataOps)
	buf := randomChunk(rand.NewPCG(7, 11))
	if _, err := seqWrite(ctx, file, buf, int64(cfg.dataSize)); err != nil {
		return fmt.Errorf("loop floor: write the backing file: %w", err)
	}
	dev, err := loop.AttachWith(file, loop.Options{DirectIO: true})
	if err != nil {
		return fmt.Errorf("loop floor: %w", err)
	}
	defer func() {
		if derr := loop.Detach(dev); derr != nil && err == nil {
			err = fmt.Errorf("loop floor: %w", derr)
		}
	}()
	if !dev.DirectIO {
		rep.skip(sData, "loop device alone ÷ its file", "",
			"n/a: the kernel kept the loop device buffered")
		return nil
	}
	// Reads as above; writes as the data path's random write (buffered, one fsync
	// at the end), into the file and into the device's own page cache.
	load := dataLoad{size: int64(cfg.dataSize), ops: cfg.dataOps, seed: 0x6c6f6f70}
	var reads, writes [2][]float64 // [0] file, [1] device
	for run := range cfg.dataRuns {
		order := []int{0, 1}
		if run%2 == 1 {
			slices.Reverse(order)
		}
		for _, i := range order {
			path := []string{file, dev.Path}[i]
			if err := settle(); err != nil {
				return err
			}
			iops, err := directRandReads(ctx, path, load.size, load.ops, uint64(run))
			if err != nil {
				return fmt.Errorf("loop floor: %w", err)
			}
			reads[i] = append(reads[i], iops)
			if err := settle(); err != nil {
				return err
			}
			elapsed, err := randIO(ctx, path, buf[:ioBlock], load, rand.New(rand.NewPCG(load.seed, uint64(run))), true)
			if err != nil {
				return fmt.Errorf("loop floor: random writes to %s: %w", path, err)
			}
			writes[i] = append(writes[i], float64(load.ops)/elapsed.Seconds())
		}
	}
	for _, w := range []struct {
		name   string
		onFile []float64
		onDev  []float64
	}{
		{"O_DIRECT random 4 KiB reads, QD1", reads[0], reads[1]},
		{"random 4 KiB writes, fsync at end", writes[0], writes[1]},
	} {
		f, d := summarizeValues(w.onFile).median, summarizeValues(w.onDev).median
		rep.info(sData, w.name+", image file", fmt.Sprintf("%.0f IOPS", f))
		rep.info(sData, w.name+", its loop device", fmt.Sprintf("%.0f IOPS", d))
		rep.info(sData, "loop device alone ÷ its file, "+w.name, fmt.Sprintf("%.2f", ratio(d, f)))
	}
	return nil
}

// directRandReads reads ops 4 KiB blocks at random offsets below size from path
// with O_DIRECT, one at a time, and returns the rate in operations per second.
func directRandReads(ctx context.Context, path string, size int64, ops int, seed uint64) (float64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, &os.PathError{Op: "open O_DIRECT", Path: path, Err: err}
	}
	defer unix.Close(fd)
	// O_DIRECT wants an aligned buffer.
	raw := make([]byte, 2*ioBlock)
	skip := (ioBlock - int(uintptr(unsafe.Pointer(&raw[0]))%ioBlock)) % ioBlock
	block := raw[skip : skip+ioBlock]
	rng := rand.New(rand.NewPCG(seed, 0x6c6f6f70))
	start := time.Now()
	for i := range ops {
		if i%1024 == 0 && ctx.Err() != nil {
			return 0, ctx.Err()
		}
		off := rng.Int64N(size/ioBlock) * ioBlock
		n, err := unix.Pread(fd, block, off)
		if err != nil {
			return 0, &os.PathError{Op: "pread", Path: path, Err: err}
		}
		if n != ioBlock {
			return 0, errors.New("short read from " + path)
		}
	}
	return float64(ops) / time.Since(start).Seconds(), nil
}
