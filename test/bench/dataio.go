package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The data workloads. Each run writes one file of dataLoad.size in the
// directory under test and:
//
//   - sequential write: 1 MiB writes from the start, then one fsync, timed
//     together (the data is on disk when the clock stops);
//   - sequential read: the whole file in 1 MiB reads, cold;
//   - random 4 KiB write: dataLoad.ops writes of 4 KiB at 4 KiB-aligned
//     offsets drawn from a seeded RNG into the written file, then one fsync,
//     timed together;
//   - random 4 KiB read: dataLoad.ops reads of 4 KiB at seeded offsets, one
//     at a time (QD1), cold, with readahead off (POSIX_FADV_RANDOM).
//
// "Cold" is after sync and `echo 3 > /proc/sys/vm/drop_caches`, which empties
// the page cache of the host file system and of a volume's file system alike.
// The workloads use buffered I/O, as most pods do, rather than O_DIRECT: with
// O_DIRECT a buffered loop device (a reflinked image) would still read its
// backing file through the host's page cache, the volume from memory and the
// host from disk.
// The same sync and drop precede every workload, so that no run pays for the
// writeback of the one before.
type dataLoad struct {
	size int64
	ops  int
	seed uint64
}

// dataResult is one run of the four workloads in one directory.
type dataResult struct {
	seqWrite, seqRead   float64 // MB/s (10^6 bytes per second)
	randWrite, randRead float64 // operations per second
}

const (
	seqChunk = 1 << 20
	ioBlock  = 4096
)

// runData runs the four workloads on a file in dir, with the offsets of run
// (the same for every directory in one run), and removes the file.
func runData(ctx context.Context, dir string, l dataLoad, run int) (res dataResult, err error) {
	path := filepath.Join(dir, "bench-data")
	defer func() {
		if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
			err = rerr
		}
	}()
	buf := randomChunk(rand.NewPCG(l.seed, math.MaxUint64))
	steps := []struct {
		name string
		do   func() (time.Duration, error)
		into *float64
		per  float64 // bytes or operations per run
	}{
		{"sequential write", func() (time.Duration, error) { return seqWrite(ctx, path, buf, l.size) }, &res.seqWrite, float64(l.size) / 1e6},
		{"sequential read", func() (time.Duration, error) { return seqRead(ctx, path, buf, l.size) }, &res.seqRead, float64(l.size) / 1e6},
		{"random write", func() (time.Duration, error) {
			return randIO(ctx, path, buf[:ioBlock], l, rand.New(rand.NewPCG(l.seed, uint64(2*run))), true)
		}, &res.randWrite, float64(l.ops)},
		{"random read", func() (time.Duration, error) {
			return randIO(ctx, path, buf[:ioBlock], l, rand.New(rand.NewPCG(l.seed, uint64(2*run+1))), false)
		}, &res.randRead, float64(l.ops)},
	}
	for _, s := range steps {
		if err := settle(); err != nil {
			return res, err
		}
		elapsed, err := s.do()
		if err != nil {
			return res, fmt.Errorf("%s in %s: %w", s.name, dir, err)
		}
		*s.into = s.per / elapsed.Seconds()
	}
	return res, nil
}

// settle writes back all dirty data and drops the clean page cache, dentries
// and inodes.
func settle() error {
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		return fmt.Errorf("drop caches: %w", err)
	}
	return nil
}

func seqWrite(ctx context.Context, path string, buf []byte, size int64) (time.Duration, error) {
	start := time.Now()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	for done, i := int64(0), 0; done < size; i++ {
		if i%64 == 0 && ctx.Err() != nil {
			f.Close()
			return 0, ctx.Err()
		}
		n, err := f.Write(buf[:min(int64(len(buf)), size-done)])
		if err != nil {
			f.Close()
			return 0, err
		}
		done += int64(n)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func seqRead(ctx context.Context, path string, buf []byte, size int64) (time.Duration, error) {
	start := time.Now()
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var total int64
	for i := 0; ; i++ {
		if i%64 == 0 && ctx.Err() != nil {
			return 0, ctx.Err()
		}
		n, err := f.Read(buf)
		total += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, err
		}
	}
	elapsed := time.Since(start)
	if total != size {
		return 0, fmt.Errorf("read %d bytes of %s, wrote %d", total, path, size)
	}
	return elapsed, nil
}

// randIO makes l.ops 4 KiB writes (then one fsync) or reads at offsets from
// rng, one at a time.
func randIO(ctx context.Context, path string, block []byte, l dataLoad, rng *rand.Rand, write bool) (time.Duration, error) {
	blocks := l.size / ioBlock
	start := time.Now()
	flag := os.O_RDONLY
	if write {
		flag = os.O_WRONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if !write {
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
			return 0, fmt.Errorf("fadvise random: %w", err)
		}
	}
	for i := range l.ops {
		if i%1024 == 0 && ctx.Err() != nil {
			return 0, ctx.Err()
		}
		off := rng.Int64N(blocks) * ioBlock
		var n int
		if write {
			n, err = f.WriteAt(block, off)
		} else {
			n, err = f.ReadAt(block, off)
		}
		if err != nil {
			return 0, err
		}
		if n != ioBlock {
			return 0, fmt.Errorf("short %d-byte transfer at %d", n, off)
		}
	}
	if write {
		if err := f.Sync(); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// fitrim is FITRIM, _IOWR('X', 121, struct fstrim_range), which x/sys lacks.
const fitrim = 0xc0185879

type fstrimRange struct{ start, length, minLen uint64 }

// trim discards the free blocks of the file system mounted at dir. On an
// image volume that punches holes in the backing file, so that each run's
// writes allocate host blocks, as the host directory's do, rather than
// overwrite blocks a previous run left allocated.
func trim(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("trim: %w", &os.PathError{Op: "open", Path: dir, Err: err})
	}
	defer unix.Close(fd)
	r := fstrimRange{length: math.MaxUint64}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fitrim, uintptr(unsafe.Pointer(&r))); errno != 0 {
		return fmt.Errorf("trim: %w", &os.PathError{Op: "FITRIM", Path: dir, Err: errno})
	}
	return nil
}

// byteSize is a flag value in bytes, written as a number with an optional
// binary suffix: 1GiB, 512MiB, 64KiB (K, M, G alone mean the same).
type byteSize int64

func (b *byteSize) String() string {
	n := int64(*b)
	for _, u := range sizeSuffixes[:3] {
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// sizeSuffixes are tried in order: the longer spellings first.
var sizeSuffixes = []struct {
	suffix string
	shift  uint
}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"G", 30}, {"M", 20}, {"K", 10}}

func (b *byteSize) Set(s string) error {
	num, shift := s, uint(0)
	for _, u := range sizeSuffixes {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			num, shift = rest, u.shift
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64>>shift {
		return fmt.Errorf("%q is not a size (examples: 1GiB, 512MiB, 4096)", s)
	}
	*b = byteSize(n << shift)
	return nil
}

// randomChunk returns seqChunk bytes drawn from src, the workloads' data.
func randomChunk(src rand.Source) []byte {
	fill := rand.New(src)
	buf := make([]byte, seqChunk)
	for i := range buf {
		buf[i] = byte(fill.Uint32())
	}
	return buf
}
