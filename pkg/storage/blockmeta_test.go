package storage_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"golang.org/x/sys/unix"
)

const blk = storage.BlockSize

// imageSite is an image pool on a fresh loop filesystem fs and its engine.
func imageSite(t *testing.T, fs testutil.FS) (*storage.Engine, *storage.Pool) {
	t.Helper()
	e := startEngine(t, loopPool(t, fs, storage.KindImage))
	return e, e.DefaultPool()
}

// blockVolume creates a raw block image volume of size bytes (a sparse file) and
// returns its record and the path of its image.
func blockVolume(t *testing.T, p *storage.Pool, name string, size int64, src *storage.Source) (*storage.Record, string) {
	t.Helper()
	r, err := p.Create(context.Background(), storage.CreateRequest{
		Name: name, RequiredBytes: size, AccessType: storage.AccessBlock, Source: src,
		Parameters: map[string]string{storage.ParamPool: p.Name()},
	})
	if err != nil {
		t.Fatalf("Create %s: %v", name, err)
	}
	return r, filepath.Join(p.VolumeDir(r.Hash()), storage.ImageFile)
}

// blocks is a set of block numbers.
type blocks map[int64]bool

func (b blocks) sorted() []int64 {
	out := make([]int64, 0, len(b))
	for k := range b {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// image is an open image volume file the tests write blocks into.
type image struct {
	t *testing.T
	f *os.File
}

func openImage(t *testing.T, path string) *image {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &image{t: t, f: f}
}

// write writes data at block n and returns it.
func (im *image) write(n int64, data []byte) []byte {
	im.t.Helper()
	if _, err := im.f.WriteAt(data, n*blk); err != nil {
		im.t.Fatal(err)
	}
	return data
}

func (im *image) writeRandom(n, count int64) {
	im.t.Helper()
	buf := make([]byte, count*blk)
	_, _ = rand.Read(buf)
	im.write(n, buf)
}

func (im *image) read(n int64) []byte {
	im.t.Helper()
	buf := make([]byte, blk)
	if _, err := im.f.ReadAt(buf, n*blk); err != nil {
		im.t.Fatal(err)
	}
	return buf
}

func (im *image) punch(n, count int64) {
	im.t.Helper()
	if err := unix.Fallocate(int(im.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, n*blk, count*blk); err != nil {
		im.t.Fatal(err)
	}
}

func (im *image) sync() {
	im.t.Helper()
	if err := im.f.Sync(); err != nil {
		im.t.Fatal(err)
	}
}

func randInt(t *testing.T, n int64) int64 {
	v, err := rand.Int(rand.Reader, big.NewInt(n))
	if err != nil {
		t.Fatal(err)
	}
	return v.Int64()
}

// listed collects a listing's ranges, checking the spec's rules on the way: ranges
// ascending and apart, each of whole aligned blocks, none ending at or before start,
// none past size; it returns the blocks they cover.
func listed(t *testing.T, m *storage.BlockMetadata, start int64) (blocks, []storage.BlockRange) {
	t.Helper()
	defer m.Close()
	got := blocks{}
	var ranges []storage.BlockRange
	err := m.Walk(context.Background(), func(r storage.BlockRange) error {
		if r.Length <= 0 || r.Offset%blk != 0 || r.Length%blk != 0 {
			t.Fatalf("range %+v is not whole aligned blocks", r)
		}
		if n := len(ranges); n > 0 && ranges[n-1].End() >= r.Offset {
			t.Fatalf("range %+v does not come after %+v with a gap", r, ranges[n-1])
		}
		if r.End() <= start || r.End() > m.SizeBytes {
			t.Fatalf("range %+v ends at or before start %d or past size %d", r, start, m.SizeBytes)
		}
		ranges = append(ranges, r)
		for b := r.Offset / blk; b < r.End()/blk; b++ {
			got[b] = true
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Walk: %v", err)
	}
	return got, ranges
}

func changedBlocks(t *testing.T, e *storage.Engine, base, target string, start int64) blocks {
	t.Helper()
	m, err := e.ChangedBlocks(context.Background(), base, target, start)
	if err != nil {
		t.Fatalf("ChangedBlocks: %v", err)
	}
	got, _ := listed(t, m, start)
	return got
}

// contentDiff reads two snapshot images whole and returns the blocks whose bytes
// differ: the truth the extents must cover.
func contentDiff(t *testing.T, p *storage.Pool, a, b *storage.Snapshot) blocks {
	t.Helper()
	ra, rb := readSnapshotImage(t, p, a), readSnapshotImage(t, p, b)
	diff := blocks{}
	for n := int64(0); n*blk < int64(max(len(ra), len(rb))); n++ {
		if !bytes.Equal(blockOf(ra, n), blockOf(rb, n)) {
			diff[n] = true
		}
	}
	return diff
}

func blockOf(data []byte, n int64) []byte {
	out := make([]byte, blk)
	if n*blk < int64(len(data)) {
		copy(out, data[n*blk:])
	}
	return out
}

func readSnapshotImage(t *testing.T, p *storage.Pool, s *storage.Snapshot) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(p.Config().Path, "snapshots", s.Hash(), storage.ImageFile))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestChangedBlocksRandomWrites writes random blocks into a sparse image between two
// snapshots, on XFS with reflinks: the delta lists every block written, none
// missed. The only blocks it lists beyond those whose bytes differ are the ones
// written with what they held (a rewrite of the same bytes, zeros into a hole):
// the engine reads extents, not data, and such a block has new extents.
func TestChangedBlocksRandomWrites(t *testing.T) {
	e, p := imageSite(t, testutil.XFSPlain)
	const size = 64 << 20
	nBlocks := int64(size / blk)
	r, path := blockVolume(t, p, "vol", size, nil)
	im := openImage(t, path)
	im.writeRandom(0, 1024)        // 4 MiB of data at the start
	im.writeRandom(nBlocks/2, 256) // 1 MiB in the middle; holes elsewhere
	im.sync()
	base := snapshotReady(t, p, "base", r.Hash())

	written := blocks{}
	for len(written) < 300 {
		n := randInt(t, nBlocks)
		im.writeRandom(n, 1)
		written[n] = true
	}
	// Extras: the same bytes again over data, zeros into holes.
	same := blocks{}
	for _, n := range []int64{3, 500, nBlocks/2 + 7} {
		if !written[n] {
			im.write(n, im.read(n))
			same[n] = true
		}
	}
	for _, n := range []int64{nBlocks - 1, nBlocks/4 + 1} {
		if !written[n] {
			im.write(n, make([]byte, blk))
			same[n] = true
		}
	}
	im.sync()
	target := snapshotReady(t, p, "target", r.Hash())

	got := changedBlocks(t, e, base.ID, target.ID, 0)
	truth := contentDiff(t, p, base, target)
	for n := range truth {
		if !got[n] {
			t.Errorf("block %d differs but is not listed", n)
		}
	}
	var extras []int64
	for _, n := range got.sorted() {
		switch {
		case truth[n]:
		case same[n]:
			extras = append(extras, n)
		default:
			t.Errorf("block %d listed but neither changed nor written", n)
		}
	}
	for n := range written {
		if !got[n] {
			t.Errorf("written block %d not listed", n)
		}
	}
	t.Logf("%d blocks written (%d changed their bytes), %d listed; extras: %d blocks written with the bytes they held %v",
		len(written), len(truth), len(got), len(extras), extras)
	if len(extras) != len(same) {
		t.Errorf("extras %v, want every block rewritten with its own bytes %v", extras, same.sorted())
	}

	// The same delta from a starting offset: what lies before it is left out, and
	// nothing after it is lost.
	start := nBlocks/2*blk + 100
	from := changedBlocks(t, e, base.ID, target.ID, start)
	for n := range got {
		if (n+1)*blk > start && !from[n] {
			t.Errorf("block %d after starting offset %d not listed", n, start)
		}
	}
	for n := range from {
		if (n+1)*blk <= start {
			t.Errorf("block %d before starting offset %d listed", n, start)
		}
	}
	// A snapshot against itself: nothing changed.
	if self := changedBlocks(t, e, target.ID, target.ID, 0); len(self) != 0 {
		t.Errorf("a snapshot against itself lists %v", self.sorted())
	}
}

// anchored reports whether snapshot s has its image's anchor (snapshotanchor.go),
// and fails the test if it is there but not a copy of the image.
func anchored(t *testing.T, p *storage.Pool, s *storage.Snapshot) bool {
	t.Helper()
	anchor, err := os.ReadFile(filepath.Join(p.Config().Path, "snapshots", s.Hash(), storage.AnchorFile))
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(anchor, readSnapshotImage(t, p, s)) {
		t.Fatalf("the anchor of snapshot %s differs from its image", s.ID)
	}
	return true
}

// TestSnapshotImageAnchor: every snapshot of an image pool with reflinks gets an
// anchor, a second reflink of its image, so that a map of the base of a delta is
// not cut around the blocks rewritten since (each rewritten block cut the base's
// extent twice); without it the delta is the same, from more extents.
func TestSnapshotImageAnchor(t *testing.T) {
	e, p := imageSite(t, testutil.XFSPlain)
	const size = 16 << 20
	nBlocks := int64(size / blk)
	r, path := blockVolume(t, p, "vol", size, nil)
	im := openImage(t, path)
	im.writeRandom(0, nBlocks) // one extent, the whole image
	im.sync()
	base := snapshotReady(t, p, "base", r.Hash())
	const rewritten = 40
	for n := int64(0); n < rewritten; n++ {
		im.writeRandom(n*nBlocks/rewritten+7, 1) // apart: no two merge
	}
	im.sync()
	target := snapshotReady(t, p, "target", r.Hash())
	for _, s := range []*storage.Snapshot{base, target} {
		if !anchored(t, p, s) {
			t.Fatalf("snapshot %s has no anchor", s.ID)
		}
	}
	delta := func() (blocks, int) {
		m, err := e.ChangedBlocks(context.Background(), base.ID, target.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := listed(t, m, 0)
		return got, m.Stats().Extents
	}
	got, withAnchor := delta()
	if len(got) != rewritten {
		t.Errorf("delta lists %d blocks, want the %d rewritten", len(got), rewritten)
	}
	if err := os.Remove(filepath.Join(p.Config().Path, "snapshots", base.Hash(), storage.AnchorFile)); err != nil {
		t.Fatal(err)
	}
	// XFS drops an unlinked file's references in the background (inodegc), at
	// its own pace: neither statfs nor syncfs waits for it here.
	var bare blocks
	var without int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		bare, without = delta()
		if without >= withAnchor+2*rewritten || time.Now().After(deadline) {
			break
		}
	}
	if !slices.Equal(bare.sorted(), got.sorted()) {
		t.Errorf("without the base's anchor the delta lists %v, with it %v", bare.sorted(), got.sorted())
	}
	t.Logf("delta of %d rewritten blocks: %d extents mapped with the base's anchor, %d without", rewritten, withAnchor, without)
	if without < withAnchor+2*rewritten {
		t.Errorf("the base's anchor saved %d extents, want at least %d (two per block rewritten)", without-withAnchor, 2*rewritten)
	}
}

// TestAllocatedBlocks lists the ranges of a partially written sparse image: exactly
// the blocks written, merged where adjacent, from any starting offset.
func TestAllocatedBlocks(t *testing.T) {
	e, p := imageSite(t, testutil.XFSPlain)
	const size = 32 << 20
	r, path := blockVolume(t, p, "vol", size, nil)
	im := openImage(t, path)
	want := blocks{}
	for _, w := range []struct{ at, n int64 }{{0, 3}, {10, 1}, {11, 2}, {1000, 64}, {size/blk - 1, 1}} {
		im.writeRandom(w.at, w.n)
		for b := w.at; b < w.at+w.n; b++ {
			want[b] = true
		}
	}
	im.sync()
	s := snapshotReady(t, p, "s", r.Hash())
	for _, start := range []int64{0, 5, 11*blk + 1, 2000 * blk, size} {
		m, err := e.AllocatedBlocks(context.Background(), s.ID, start)
		if err != nil {
			t.Fatal(err)
		}
		if m.SizeBytes != size {
			t.Errorf("SizeBytes %d, want %d", m.SizeBytes, size)
		}
		got, ranges := listed(t, m, start)
		for b := range want {
			if (b+1)*blk > start && !got[b] {
				t.Errorf("start %d: written block %d not listed", start, b)
			}
		}
		for b := range got {
			if !want[b] {
				t.Errorf("start %d: block %d listed, never written", start, b)
			}
		}
		if start == 0 && len(ranges) != 4 {
			t.Errorf("ranges %v, want 4 (adjacent writes merged)", ranges)
		}
	}
}

// TestChangedBlocksCloneChain: snapshots along a chain of reflink copies (a volume
// cloned from another, then snapshotted three times with writes between) share
// what was not written; each delta lists the blocks written between its two
// snapshots, and the chain's first to last their union.
func TestChangedBlocksCloneChain(t *testing.T) {
	e, p := imageSite(t, testutil.XFSPlain)
	const size = 16 << 20
	a, pathA := blockVolume(t, p, "a", size, nil)
	ima := openImage(t, pathA)
	ima.writeRandom(0, size/blk) // fully written
	ima.sync()
	b, pathB := blockVolume(t, p, "b", size, &storage.Source{Kind: storage.SourceVolume, ID: a.ID})
	imb := openImage(t, pathB)
	imb.writeRandom(100, 4)
	imb.sync()
	s1 := snapshotReady(t, p, "s1", b.Hash())
	first := blocks{7: true, 8: true, 2000: true}
	for n := range first {
		imb.writeRandom(n, 1)
	}
	imb.sync()
	s2 := snapshotReady(t, p, "s2", b.Hash())
	second := blocks{8: true, 3000: true, 4095: true}
	for n := range second {
		imb.writeRandom(n, 1)
	}
	imb.sync()
	s3 := snapshotReady(t, p, "s3", b.Hash())
	union := blocks{}
	for n := range first {
		union[n] = true
	}
	for n := range second {
		union[n] = true
	}
	for _, c := range []struct {
		name         string
		base, target *storage.Snapshot
		want         blocks
	}{
		{"s1-s2", s1, s2, first},
		{"s2-s3", s2, s3, second},
		{"s1-s3", s1, s3, union},
	} {
		got := changedBlocks(t, e, c.base.ID, c.target.ID, 0)
		if !slices.Equal(got.sorted(), c.want.sorted()) {
			t.Errorf("%s: listed %v, want %v", c.name, got.sorted(), c.want.sorted())
		}
	}
	// A snapshot of the clone's source is another volume's.
	sa := snapshotReady(t, p, "sa", a.Hash())
	_, err := e.ChangedBlocks(context.Background(), sa.ID, s1.ID, 0)
	checkErr(t, err, storage.ErrInvalid)
}

// TestChangedBlocksPunchedHoles: blocks of data punched out between two snapshots
// read as zeros now and are listed; a hole punched where there was none changes
// nothing and is not.
func TestChangedBlocksPunchedHoles(t *testing.T) {
	e, p := imageSite(t, testutil.XFSPlain)
	const size = 16 << 20
	r, path := blockVolume(t, p, "vol", size, nil)
	im := openImage(t, path)
	im.writeRandom(0, 256)
	im.sync()
	base := snapshotReady(t, p, "base", r.Hash())
	im.punch(10, 3)   // data
	im.punch(200, 1)  // data
	im.punch(1000, 8) // already a hole
	im.sync()
	target := snapshotReady(t, p, "target", r.Hash())
	got := changedBlocks(t, e, base.ID, target.ID, 0)
	want := blocks{10: true, 11: true, 12: true, 200: true}
	if !slices.Equal(got.sorted(), want.sorted()) {
		t.Errorf("listed %v, want %v", got.sorted(), want.sorted())
	}
	if truth := contentDiff(t, p, base, target); !slices.Equal(truth.sorted(), want.sorted()) {
		t.Errorf("content differs at %v, want %v", truth.sorted(), want.sorted())
	}
}

// TestBlockMetadataErrors: the engine's answers the handlers map to the spec's codes.
func TestBlockMetadataErrors(t *testing.T) {
	e, p := imageSite(t, testutil.XFSPlain)
	r, _ := blockVolume(t, p, "vol", 8<<20, nil)
	other, _ := blockVolume(t, p, "other", 8<<20, nil)
	s1 := snapshotReady(t, p, "s1", r.Hash())
	s2 := snapshotReady(t, p, "s2", r.Hash())
	so := snapshotReady(t, p, "so", other.Hash())
	unknown := storage.SnapshotID(p.Name(), "nope")
	ctx := context.Background()
	for _, c := range []struct {
		name string
		call func() (*storage.BlockMetadata, error)
		want error
	}{
		{"allocated unknown", func() (*storage.BlockMetadata, error) { return e.AllocatedBlocks(ctx, unknown, 0) }, storage.ErrNotFound},
		{"allocated foreign", func() (*storage.BlockMetadata, error) { return e.AllocatedBlocks(ctx, "snap-of-another-driver", 0) }, storage.ErrNotFound},
		{"allocated hostile", func() (*storage.BlockMetadata, error) { return e.AllocatedBlocks(ctx, "../x", 0) }, storage.ErrInvalid},
		{"allocated negative start", func() (*storage.BlockMetadata, error) { return e.AllocatedBlocks(ctx, s1.ID, -1) }, storage.ErrOutOfRange},
		{"allocated start past size", func() (*storage.BlockMetadata, error) { return e.AllocatedBlocks(ctx, s1.ID, 8<<20+1) }, storage.ErrOutOfRange},
		{"allocated start at size", func() (*storage.BlockMetadata, error) { return e.AllocatedBlocks(ctx, s1.ID, 8<<20) }, nil},
		{"delta unknown base", func() (*storage.BlockMetadata, error) { return e.ChangedBlocks(ctx, unknown, s2.ID, 0) }, storage.ErrNotFound},
		{"delta unknown target", func() (*storage.BlockMetadata, error) { return e.ChangedBlocks(ctx, s1.ID, unknown, 0) }, storage.ErrNotFound},
		{"delta other volume", func() (*storage.BlockMetadata, error) { return e.ChangedBlocks(ctx, s1.ID, so.ID, 0) }, storage.ErrInvalid},
		{"delta start past size", func() (*storage.BlockMetadata, error) { return e.ChangedBlocks(ctx, s1.ID, s2.ID, 9<<20) }, storage.ErrOutOfRange},
		{"delta", func() (*storage.BlockMetadata, error) { return e.ChangedBlocks(ctx, s1.ID, s2.ID, 0) }, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, err := c.call()
			checkErr(t, err, c.want)
			if err == nil {
				m.Close()
			}
		})
	}
	if !e.BlockMetadataServed() {
		t.Error("BlockMetadataServed is false for an image pool with reflinks")
	}
}

// TestBlockMetadataWithoutReflinks: an image pool on ext4 lists allocated blocks,
// but its snapshots are full copies, so a delta is FailedPrecondition; a dir pool's
// snapshots are directories and have no block metadata at all.
func TestBlockMetadataWithoutReflinks(t *testing.T) {
	e, p := imageSite(t, testutil.Ext4Plain)
	r, path := blockVolume(t, p, "vol", 8<<20, nil)
	im := openImage(t, path)
	im.writeRandom(4, 2)
	im.sync()
	s1 := snapshotReady(t, p, "s1", r.Hash())
	s2 := snapshotReady(t, p, "s2", r.Hash())
	m, err := e.AllocatedBlocks(context.Background(), s1.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := listed(t, m, 0); !slices.Equal(got.sorted(), []int64{4, 5}) {
		t.Errorf("allocated %v, want [4 5]", got.sorted())
	}
	_, err = e.ChangedBlocks(context.Background(), s1.ID, s2.ID, 0)
	checkErr(t, err, storage.ErrPrecondition)
	if anchored(t, p, s1) {
		t.Error("a snapshot of a pool without reflinks has an anchor")
	}
	if e.BlockMetadataServed() {
		t.Error("BlockMetadataServed is true without reflinks")
	}

	d := startEngine(t, dirPool(t.TempDir(), "default"))
	dp := d.DefaultPool()
	v := mustCreate(t, dp, "dirvol", 8<<20)
	ds := snapshotReady(t, dp, "ds", v.Hash())
	if anchored(t, dp, ds) {
		t.Error("a snapshot of a directory volume has an anchor")
	}
	_, err = d.AllocatedBlocks(context.Background(), ds.ID, 0)
	checkErr(t, err, storage.ErrPrecondition)
	_, err = d.ChangedBlocks(context.Background(), ds.ID, ds.ID, 0)
	checkErr(t, err, storage.ErrPrecondition)
}

// btrfsCompressed is btrfs with every write compressed: its FIEMAP marks compressed
// extents ENCODED and gives an extent's start for every part of a file referring
// into it, so shared data cannot be told by address alone.
var btrfsCompressed = testutil.FS{Name: "btrfs", Mkfs: []string{"mkfs.btrfs", "-q", "-f"}, Opts: "compress-force=zstd"}

// TestChangedBlocksCompressedBtrfs: on compressed btrfs the delta lists every block
// rewritten. Where both snapshots refer into one compressed extent the engine
// compares the bytes; but btrfs's FIEMAP merges a compressed extent's tail with the
// next compressed extent when their compressed data lie side by side on disk, and
// the merged extent's address is no longer the next one's, so that next extent
// (128 KiB at most) is listed too: extras lie within 32 blocks of a rewritten block.
func TestChangedBlocksCompressedBtrfs(t *testing.T) {
	if _, err := exec.LookPath("mkfs.btrfs"); err != nil {
		t.Skip("mkfs.btrfs is not installed")
	}
	e, p := imageSite(t, btrfsCompressed)
	const size = 16 << 20
	nBlocks := int64(size / blk)
	r, path := blockVolume(t, p, "vol", size, nil)
	im := openImage(t, path)
	// Compressible blocks: each its own number, repeated.
	text := func(n int64, salt string) []byte {
		return bytes.Repeat([]byte(fmt.Sprintf("block %08d %s|", n, salt)), blk)[:blk]
	}
	for n := range nBlocks {
		im.write(n, text(n, "base"))
	}
	im.sync()
	base := snapshotReady(t, p, "base", r.Hash())
	written := blocks{}
	for len(written) < 40 {
		n := randInt(t, nBlocks)
		im.write(n, text(n, "target"))
		written[n] = true
	}
	im.sync()
	target := snapshotReady(t, p, "target", r.Hash())
	got := changedBlocks(t, e, base.ID, target.ID, 0)
	for n := range written {
		if !got[n] {
			t.Errorf("rewritten block %d not listed", n)
		}
	}
	var extras []int64
	for _, n := range got.sorted() {
		if written[n] {
			continue
		}
		extras = append(extras, n)
		near := false
		for w := range written {
			near = near || n > w && n-w <= 64
		}
		if !near {
			t.Errorf("block %d listed, not within 64 blocks after a rewritten block", n)
		}
	}
	t.Logf("%d blocks rewritten, %d listed, %d extras (the compressed extents btrfs's FIEMAP merged)", len(written), len(got), len(extras))
}
