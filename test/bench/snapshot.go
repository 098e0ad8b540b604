package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
)

// The snapshot bench (--snapshots, on by default) measures what a snapshot and a
// restore of a dir volume holding --snap-size of random data cost through the
// driver's socket: CreateSnapshot, repeated until ready_to_use, then CreateVolume
// from the snapshot. It runs on two filesystems the bench makes on loop files in its
// work directory: XFS with reflink, where both are FICLONE copies, and ext4, where
// they are copies of the data (the snapshot in the background). The reference is
// what a driver without snapshots does, in the same run on the same data: tar czf
// of the volume, then tar xzf into a new directory.
//
// The targets: reflink ≥ 100× faster than tar, and (with --snap-big, which writes
// ten times --snap-size) the same time for ten times the data.

const sSnap = "snapshots"

// Targets of the snapshot bench.
const (
	tarOverReflink = 100 // tar czf + xzf ÷ reflink snapshot + restore, at least
	bigOverSmall   = 2   // reflink time for 10× the data ÷ for 1×, at most ("≈ 1")
)

// snapFiles is how many files hold a volume's data, at every size: a reflink's cost
// grows with files and extents, not bytes, so both sizes get the same file count.
const snapFiles = 8

// reflinkRounds are timed per size; the median is reported.
const reflinkRounds = 9

// snapConfig is the snapshot bench's part of the command line. Its flags are
// registered here, beside the code they drive, and checked as they are parsed.
type snapConfig struct {
	enabled bool
	size    snapSize
	big     bool
}

var snapCfg = snapConfig{size: snapSize{1 << 30}}

func init() {
	flag.BoolVar(&snapCfg.enabled, "snapshots", true, "measure snapshot + restore with reflink (XFS) and the copy fallback (ext4) against tar czf + xzf")
	flag.Var(&snapCfg.size, "snap-size", "random data in the volume the snapshot bench copies (1GiB, 512MiB...)")
	flag.BoolVar(&snapCfg.big, "snap-big", false, "also snapshot ten times --snap-size on XFS, for the reflink time ratio (needs about that much free disk)")
}

// snapSize is --snap-size: a byteSize the volume's files divide evenly.
type snapSize struct{ byteSize }

func (s *snapSize) Set(v string) error {
	if err := s.byteSize.Set(v); err != nil {
		return err
	}
	if s.byteSize < snapFiles<<20 || s.byteSize%(snapFiles*ioBlock) != 0 {
		return fmt.Errorf("must be at least %dMiB and a multiple of %d", snapFiles, snapFiles*ioBlock)
	}
	return nil
}

func (c *snapConfig) params() string {
	big := 10 * c.size.byteSize
	s := fmt.Sprintf("%s of random data in %d files per volume; reflink: median of %d rounds; tar: gzip level 6",
		c.size.String(), snapFiles, reflinkRounds)
	if c.big {
		s += fmt.Sprintf("; --snap-big: %s", big.String())
	}
	return s
}

// snapFS is a filesystem the snapshot bench made on a loop file, with a pool on it.
type snapFS struct {
	name, pool string // how the report names it; the pool's name
	image, mnt string
}

// benchSnapshots runs the snapshot bench under root with the driver binary bin.
func benchSnapshots(ctx context.Context, bin, root string, rep *report) (err error) {
	if !snapCfg.enabled {
		rep.skip(sSnap, "snapshot + restore", "", "disabled by --snapshots=false")
		return nil
	}
	rep.env("snapshots", snapCfg.params())
	size := int64(snapCfg.size.byteSize)
	dir := filepath.Join(root, "snapshots")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// Each filesystem holds the data, tar's archive and extraction (or the copies of
	// the fallback) at once; its file grows on the host as it fills.
	fsSize := max(4<<30, 3*size+(1<<30))
	need := 2 * (3*size + 256<<20)
	fses := []*snapFS{{name: "xfs reflink", pool: "snap-xfs"}, {name: "ext4 copy", pool: "snap-ext4"}}
	sizes := []int64{fsSize, fsSize}
	if snapCfg.big {
		// The snapshot and the restore each reserve the source's size from free space.
		fses = append(fses, &snapFS{name: "xfs reflink, 10×", pool: "snap-xfs-big"})
		sizes = append(sizes, 20*size+(2<<30))
		need += 10*size + 256<<20
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return err
	}
	if free := int64(st.Bavail) * st.Bsize; free < need {
		return fmt.Errorf("the snapshot bench needs %s free in %s, which has %s: lower --snap-size or drop --snap-big",
			fmtMiB(need), dir, fmtMiB(free))
	}

	for i, fs := range fses {
		kind := "xfs"
		if strings.HasPrefix(fs.name, "ext4") {
			kind = "ext4"
		}
		progress("snapshots: making %s on a %s loop file", kind, fmtMiB(sizes[i]))
		err := fs.make(ctx, filepath.Join(dir, fs.pool), kind, sizes[i])
		defer func() {
			if cerr := fs.remove(); cerr != nil && err == nil {
				err = cerr
			}
		}()
		if err != nil {
			return err
		}
	}
	var cfg strings.Builder
	cfg.WriteString("pools:\n")
	for _, fs := range fses {
		fmt.Fprintf(&cfg, "- name: %s\n  path: %s\n  kind: dir\n  overcommit: true\n", fs.pool, strconv.Quote(filepath.Join(fs.mnt, "pool")))
	}
	d, err := newDriverWith(bin, dir, cfg.String())
	if err != nil {
		return err
	}
	defer d.stop(10 * time.Second)
	if _, err := d.start(ctx); err != nil {
		return err
	}

	xfs, ext4 := fses[0], fses[1]
	progress("snapshots, %s: writing %s of random data", xfs.name, fmtMiB(size))
	src, err := fillVolume(ctx, d, xfs, "src", size, 1)
	if err != nil {
		return err
	}
	tarXFS, err := tarRound(ctx, xfs, src)
	if err != nil {
		return err
	}
	reflink, atOnce, err := reflinkTimes(ctx, d, xfs, src.id, size)
	if err != nil {
		return err
	}
	refl := summarize(reflink)
	rep.info(sSnap, fmt.Sprintf("tar czf + tar xzf of %s, xfs", fmtMiB(size)), tarXFS.String())
	rep.info(sSnap, fmt.Sprintf("reflink snapshot (until ready) + restore of %s, median / max", fmtMiB(size)), fmtDur(refl.p50)+" / "+fmtDur(refl.max))
	rep.check(sSnap, "reflink: ready_to_use in the first CreateSnapshot answer", strconv.FormatBool(atOnce), "true", atOnce)
	r := ratio(float64(tarXFS.total()), float64(refl.p50))
	rep.check(sSnap, "tar ÷ reflink snapshot + restore", fmt.Sprintf("%.0f×", r), fmt.Sprintf("≥ %d×", tarOverReflink), r >= tarOverReflink)

	progress("snapshots, %s: writing %s of random data", ext4.name, fmtMiB(size))
	esrc, err := fillVolume(ctx, d, ext4, "src", size, 1)
	if err != nil {
		return err
	}
	tarExt4, err := tarRound(ctx, ext4, esrc)
	if err != nil {
		return err
	}
	progress("snapshots, %s: snapshot and restore", ext4.name)
	copied, err := snapshotRestore(ctx, d, ext4, esrc.id, "copy", size)
	if err != nil {
		return err
	}
	rep.info(sSnap, fmt.Sprintf("tar czf + tar xzf of %s, ext4", fmtMiB(size)), tarExt4.String())
	rep.info(sSnap, fmt.Sprintf("copy fallback (ext4): snapshot until ready + restore of %s", fmtMiB(size)), copied.String())
	rep.info(sSnap, "tar ÷ copy fallback", fmt.Sprintf("%.1f×", ratio(float64(tarExt4.total()), float64(copied.total()))))

	if !snapCfg.big {
		rep.skip(sSnap, "reflink 10× data ÷ 1×", fmt.Sprintf("≤ %d (≈ 1)", bigOverSmall), "not measured: enable with --snap-big")
		return nil
	}
	big := fses[2]
	progress("snapshots, %s: writing %s of random data", big.name, fmtMiB(10*size))
	bsrc, err := fillVolume(ctx, d, big, "src", 10*size, 2)
	if err != nil {
		return err
	}
	bigTimes, _, err := reflinkTimes(ctx, d, big, bsrc.id, 10*size)
	if err != nil {
		return err
	}
	bs := summarize(bigTimes)
	rep.info(sSnap, fmt.Sprintf("reflink snapshot (until ready) + restore of %s, median / max", fmtMiB(10*size)), fmtDur(bs.p50)+" / "+fmtDur(bs.max))
	r = ratio(float64(bs.p50), float64(refl.p50))
	rep.check(sSnap, "reflink 10× data ÷ 1×", fmt.Sprintf("%.2f", r), fmt.Sprintf("≤ %d (≈ 1)", bigOverSmall), r <= bigOverSmall)
	return nil
}

// make creates a filesystem of kind on a sparse file of size bytes under dir and
// mounts it (the loop device goes with the mount).
func (fs *snapFS) make(ctx context.Context, dir, kind string, size int64) error {
	fs.image, fs.mnt = filepath.Join(dir, kind+".img"), filepath.Join(dir, "mnt")
	if err := os.MkdirAll(fs.mnt, 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(fs.image, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	mkfs := []string{"mkfs.xfs", "-q", "-f", "-m", "reflink=1", fs.image}
	if kind == "ext4" {
		mkfs = []string{"mkfs.ext4", "-q", "-F", fs.image}
	}
	if err := runCmd(ctx, mkfs...); err != nil {
		return err
	}
	if err := runCmd(ctx, "mount", "-o", "loop", fs.image, fs.mnt); err != nil {
		fs.mnt = "" // nothing to unmount
		return err
	}
	return nil
}

// remove unmounts the filesystem, which frees its loop device, and deletes its file.
func (fs *snapFS) remove() error {
	if fs.image == "" {
		return nil
	}
	if fs.mnt != "" {
		if err := unmountUnder(fs.mnt); err != nil {
			return err
		}
	}
	return os.RemoveAll(filepath.Dir(fs.image))
}

// runCmd runs a command; its error carries the output.
func runCmd(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// snapVolume is a volume the snapshot bench made, and its data directory.
type snapVolume struct{ id, data string }

// snapCreate creates volume name of size bytes in fs's pool, from source when set.
// Names are per driver, not per pool: the pool's name prefixes them.
func snapCreate(ctx context.Context, d *driver, fs *snapFS, name string, size int64, source *csi.VolumeContentSource) (snapVolume, error) {
	name = fs.pool + "-" + name
	resp, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name:                name,
		CapacityRange:       &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities:  []*csi.VolumeCapability{mountCapability},
		Parameters:          map[string]string{"pool": fs.pool},
		VolumeContentSource: source,
	})
	if err != nil {
		return snapVolume{}, fmt.Errorf("CreateVolume %s in %s: %w", name, fs.pool, err)
	}
	id := resp.GetVolume().GetVolumeId()
	// The layout of a dir volume (docs/design.md): what a pod's mount shows.
	return snapVolume{id: id, data: filepath.Join(fs.mnt, "pool", "volumes", id[len(id)-32:], "data")}, nil
}

// fillVolume creates a volume holding size bytes of random data in snapFiles files,
// written and fsynced as a pod would, from a seeded generator.
func fillVolume(ctx context.Context, d *driver, fs *snapFS, name string, size int64, seed uint64) (snapVolume, error) {
	v, err := snapCreate(ctx, d, fs, name, size, nil)
	if err != nil {
		return v, err
	}
	gen := rand.NewChaCha8([32]byte{byte(seed), 'b', 'e', 'r', 't', 'h'})
	buf := make([]byte, 8<<20)
	for i := range snapFiles {
		if err := ctx.Err(); err != nil {
			return v, err
		}
		f, err := os.Create(filepath.Join(v.data, fmt.Sprintf("data-%d", i)))
		if err != nil {
			return v, err
		}
		for left := size / snapFiles; left > 0; left -= int64(len(buf)) {
			chunk := buf[:min(left, int64(len(buf)))]
			_, _ = gen.Read(chunk)
			if _, err := f.Write(chunk); err != nil {
				f.Close()
				return v, err
			}
		}
		err = f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return v, err
		}
	}
	return v, nil
}

// twoSteps is the time of an operation in two steps (pack + unpack, snapshot + restore).
type twoSteps struct {
	first, second time.Duration
	names         [2]string
}

func (s twoSteps) total() time.Duration { return s.first + s.second }

func (s twoSteps) String() string {
	return fmt.Sprintf("%s (%s %s + %s %s)", fmtDur(s.total()), s.names[0], fmtDur(s.first), s.names[1], fmtDur(s.second))
}

// tarRound times tar czf of the volume's data into an archive on the same
// filesystem, then tar xzf of it into a new directory, and removes both after.
func tarRound(ctx context.Context, fs *snapFS, v snapVolume) (twoSteps, error) {
	res := twoSteps{names: [2]string{"czf", "xzf"}}
	archive, into := filepath.Join(fs.mnt, "bench.tgz"), filepath.Join(fs.mnt, "extracted")
	defer os.RemoveAll(into)
	defer os.Remove(archive)
	if err := os.Mkdir(into, 0o700); err != nil {
		return res, err
	}
	progress("snapshots, %s: tar czf + tar xzf", fs.name)
	unix.Sync()
	start := time.Now()
	if err := runCmd(ctx, "tar", "czf", archive, "-C", v.data, "."); err != nil {
		return res, err
	}
	res.first = time.Since(start)
	start = time.Now()
	if err := runCmd(ctx, "tar", "xzf", archive, "-C", into); err != nil {
		return res, err
	}
	res.second = time.Since(start)
	progress("  %s", res)
	return res, nil
}

// snapshotRestore times CreateSnapshot of volume src, repeated until ready, then
// CreateVolume from the snapshot, named after tag.
func snapshotRestore(ctx context.Context, d *driver, fs *snapFS, src, tag string, size int64) (twoSteps, error) {
	res := twoSteps{names: [2]string{"snapshot", "restore"}}
	unix.Sync() // nothing the bench wrote before is left for the copy to flush
	start := time.Now()
	snap, _, err := snapshotUntilReady(ctx, d, "snap-"+tag, src)
	if err != nil {
		return res, err
	}
	res.first = time.Since(start)
	start = time.Now()
	if _, err := snapCreate(ctx, d, fs, "restore-"+tag, size, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap}}}); err != nil {
		return res, err
	}
	res.second = time.Since(start)
	return res, nil
}

// snapshotUntilReady calls CreateSnapshot until the snapshot is ready to use and
// returns its ID and whether the first answer said so already.
func snapshotUntilReady(ctx context.Context, d *driver, name, src string) (string, bool, error) {
	for calls := 0; ; calls++ {
		resp, err := d.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: src})
		if err != nil {
			return "", false, fmt.Errorf("CreateSnapshot %s: %w", name, err)
		}
		if s := resp.GetSnapshot(); s.GetReadyToUse() {
			return s.GetSnapshotId(), calls == 0, nil
		}
		select {
		case <-ctx.Done():
			return "", false, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// reflinkTimes times reflinkRounds snapshot + restore rounds of volume src and
// reports whether every snapshot was ready in its first answer.
func reflinkTimes(ctx context.Context, d *driver, fs *snapFS, src string, size int64) ([]time.Duration, bool, error) {
	var times []time.Duration
	atOnce := true
	for i := range reflinkRounds {
		tag := fmt.Sprintf("reflink-%d", i)
		// One untimed call tells whether the first answer is ready; the timed round
		// below then takes another snapshot.
		if _, first, err := snapshotUntilReady(ctx, d, "probe-"+tag, src); err != nil {
			return nil, false, err
		} else if !first {
			atOnce = false
		}
		res, err := snapshotRestore(ctx, d, fs, src, tag, size)
		if err != nil {
			return nil, false, err
		}
		progress("snapshots, %s, round %d/%d: %s", fs.name, i+1, reflinkRounds, res)
		times = append(times, res.total())
	}
	slices.Sort(times)
	if len(times) == 0 {
		return nil, false, errors.New("no reflink round ran")
	}
	return times, atOnce, nil
}
