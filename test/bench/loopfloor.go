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

// benchLoopFloor measures what a loop device alone costs a random read: O_DIRECT
// 4 KiB reads at QD1 from a file on the host directory, against the same reads
// from a direct-I/O loop device backed by that file, runs interleaved. No
// filesystem sits on the device and no page cache is involved on either side,
// so the ratio is the ceiling of any image volume's random reads on this disk.
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
	buf := make([]byte, seqChunk)
	fill := rand.New(rand.NewPCG(7, 11))
	for i := range buf {
		buf[i] = byte(fill.Uint32())
	}
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
		rep.skip(sData, "loop device alone ÷ its file, O_DIRECT random 4 KiB reads, QD1", "",
			"n/a: the kernel kept the loop device buffered")
		return nil
	}
	var onFile, onDev []float64
	for run := range cfg.dataRuns {
		order := []string{file, dev.Path}
		if run%2 == 1 {
			slices.Reverse(order)
		}
		for _, path := range order {
			if err := settle(); err != nil {
				return err
			}
			iops, err := directRandReads(ctx, path, int64(cfg.dataSize), cfg.dataOps, uint64(run))
			if err != nil {
				return fmt.Errorf("loop floor: %w", err)
			}
			if path == file {
				onFile = append(onFile, iops)
			} else {
				onDev = append(onDev, iops)
			}
		}
	}
	f, d := lowerMedian(onFile), lowerMedian(onDev)
	rep.info(sData, "O_DIRECT random 4 KiB reads, QD1, image file", fmt.Sprintf("%.0f IOPS (%.0f µs each)", f, 1e6/f))
	rep.info(sData, "O_DIRECT random 4 KiB reads, QD1, its loop device", fmt.Sprintf("%.0f IOPS (%.0f µs each)", d, 1e6/d))
	rep.info(sData, "loop device alone ÷ its file, O_DIRECT random 4 KiB reads, QD1", fmt.Sprintf("%.2f", ratio(d, f)))
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

// lowerMedian is the median of vs, the lower one for an even count.
func lowerMedian(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}
