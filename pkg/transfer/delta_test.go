package transfer

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"golang.org/x/sys/unix"
)

// restat records src's entries as they are now, for CheckTreeCopy.
func restat(t testing.TB, src string, fx *testutil.TreeFixture) {
	t.Helper()
	// Paths first, stats after: reading a directory may change its atime.
	var paths []string
	if err := filepath.WalkDir(src, func(p string, _ fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	fx.Stats = map[string]unix.Stat_t{}
	for _, p := range paths {
		rel, _ := filepath.Rel(src, p)
		fx.Stats[rel] = testutil.Lstat(t, p)
	}
}

// fullThenDelta makes src a served source, pulls it in full into a fresh
// directory once its files are older than the ctime margin, and returns the
// options of a delta pull of it into that copy.
func fullThenDelta(t *testing.T, n *testNet, id, src string, kind Kind) (PullOptions, *Result) {
	t.Helper()
	n.sources.add(id, Source{Kind: kind, Path: src, SizeBytes: 1 << 30, AccessType: "mount", Generation: "g1"})
	time.Sleep(ctimeMargin + 200*time.Millisecond)
	dest := filepath.Join(t.TempDir(), "data")
	res, err := Pull(testContext(t), n.pullOptions(t, id, dest))
	if err != nil {
		t.Fatal(err)
	}
	if res.Generation != "g1" || res.ServerTime.IsZero() || time.Since(res.ServerTime) > time.Minute {
		t.Fatalf("full pull result %+v: want the generation and the server's start time", res)
	}
	o := n.pullOptions(t, id, "")
	o.Base, o.BaseGeneration, o.BaseSince = dest, res.Generation, res.ServerTime
	return o, res
}

// A delta pull of a tree sends only the files changed since the base was
// pulled (content, mode, xattrs, renamed, newly linked, added), takes the
// others from the base by hard link, drops what was deleted, and the result is
// the source exactly.
func TestDeltaPullTree(t *testing.T) {
	testutil.RequireRoot(t)
	n := startServer(t, ServerOptions{})
	base := t.TempDir()
	src, outside := filepath.Join(base, "vol"), filepath.Join(base, "outside")
	testutil.MkdirAll(t, src)
	fx := testutil.BuildTreeFixture(t, src, outside)
	o, _ := fullThenDelta(t, n, "b1-default-delta", src, KindTree)

	at := func(rel string) string { return filepath.Join(src, rel) }
	testutil.WriteFile(t, at("a/b/c/deep.txt"), "deeper content") // 14 bytes
	if err := os.Chmod(at("owned/file"), 0o600); err != nil {     // 5 bytes
		t.Fatal(err)
	}
	testutil.SetXattr(t, at("top.txt"), "user.new", "x") // 3 bytes
	for _, gone := range []string{"ro/inside.txt", "empty"} {
		if err := os.Remove(at(gone)); err != nil {
			t.Fatal(err)
		}
	}
	added := make([]byte, 10000)
	_, _ = rand.Read(added)
	testutil.MkdirAll(t, at("new"))
	if err := os.WriteFile(at("new/added.bin"), added, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(at("suid"), at("suid2")); err != nil { // 12 bytes
		t.Fatal(err)
	}
	if err := os.Link(at("ro/sub/f"), at("f-link")); err != nil { // 1 byte, now two links
		t.Fatal(err)
	}
	// Sent in full as well: a/hl1 and its links (6 bytes, three links).
	const wantBytes = 14 + 5 + 3 + 10000 + 12 + 1 + 6
	const wantSkipped = testutil.TreeRandomSize + testutil.TreeSparseSize + 1 // random.bin, sparse.img, locked/x

	restat(t, src, fx)
	res, err := Pull(testContext(t), o)
	if err != nil {
		t.Fatal(err)
	}
	testutil.CheckTreeCopy(t, src, o.Base, fx)
	testutil.CheckTreeData(t, o.Base, fx)
	if _, err := os.Lstat(at("suid")); err == nil {
		t.Error("the renamed file's old name is in the source")
	}
	for _, gone := range []string{"ro/inside.txt", "empty", "suid"} {
		if _, err := os.Lstat(filepath.Join(o.Base, gone)); err == nil {
			t.Errorf("%s: deleted in the source, still in the copy", gone)
		}
	}
	if !res.Delta || res.Bytes != wantBytes || res.SkippedBytes != wantSkipped {
		t.Errorf("result: delta %v, %d bytes received, %d skipped; want a delta, %d and %d",
			res.Delta, res.Bytes, res.SkippedBytes, wantBytes, wantSkipped)
	}
	// Swapped and cleaned: only the copy is left beside it.
	if ents, _ := os.ReadDir(filepath.Dir(o.Base)); len(ents) != 1 {
		t.Errorf("the copy's parent holds %d entries, want 1", len(ents))
	}

	// Again, with nothing changed: only the multiply-linked files travel.
	restat(t, src, fx)
	time.Sleep(ctimeMargin + 200*time.Millisecond)
	o.BaseSince = time.Now().Add(-100 * time.Millisecond) // as if pulled just now
	res2, err := Pull(testContext(t), o)
	if err != nil {
		t.Fatal(err)
	}
	testutil.CheckTreeCopy(t, src, o.Base, fx)
	if res2.Bytes != 6+1 {
		t.Errorf("unchanged source: %d bytes received, want %d (the multiply-linked files)", res2.Bytes, 7)
	}
}

// A base that is not a copy of the source (a file the server says is
// unchanged has another size there) fails the pull with ErrNotBase, and leaves
// the base as it was; a base of another generation is replaced by a full copy.
func TestDeltaPullTreeNotBase(t *testing.T) {
	testutil.RequireRoot(t)
	n := startServer(t, ServerOptions{})
	src := t.TempDir()
	testutil.WriteFile(t, filepath.Join(src, "d", "kept"), "kept")
	testutil.WriteFile(t, filepath.Join(src, "changed"), "v1")
	o, _ := fullThenDelta(t, n, "b1-default-notbase", src, KindTree)
	testutil.WriteFile(t, filepath.Join(src, "changed"), "v2")
	testutil.WriteFile(t, filepath.Join(o.Base, "d", "kept"), "not the same size")

	_, err := Pull(testContext(t), o)
	wantErr(t, err, ErrNotBase)
	testutil.AssertContent(t, filepath.Join(o.Base, "changed"), "v1")
	if ents, _ := os.ReadDir(filepath.Dir(o.Base)); len(ents) != 1 {
		t.Errorf("the copy's parent holds %d entries after the failure, want 1", len(ents))
	}

	o.BaseGeneration = "g0"
	res, err := Pull(testContext(t), o)
	if err != nil {
		t.Fatal(err)
	}
	if res.Delta || res.Bytes != 4+2 {
		t.Errorf("another generation: delta %v, %d bytes; want a full pull of 6 bytes", res.Delta, res.Bytes)
	}
	testutil.SameTree(t, "copy", testutil.TreeSums(t, o.Base), testutil.TreeSums(t, src))
}

// An image delta sends only the chunks that differ, down to their 4 KiB
// blocks of data (zero blocks become holes): the result is byte-identical
// and as sparse as the source.
func TestDeltaPullImage(t *testing.T) {
	testutil.RequireRoot(t)
	const size = 256 << 20
	n := startServer(t, ServerOptions{})
	src := filepath.Join(t.TempDir(), "image")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	block := func(off int64) {
		b := make([]byte, 4096)
		_, _ = rand.Read(b)
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	for _, off := range []int64{0, 40 << 20, 100<<20 + 8192, 200 << 20} {
		block(off)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	o, _ := fullThenDelta(t, n, "b1-img-delta", src, KindImage)
	// The base grows to a volume's capacity: a hole past the source's size.
	if err := os.Truncate(o.Base, size+64<<20); err != nil {
		t.Fatal(err)
	}

	// Eight 4 KiB writes in distinct chunks, one of the first data blocks
	// punched out (a hole again).
	const writes = 8
	for i := range writes {
		block(int64(i)*(30<<20) + 5<<20 + 4096)
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 40<<20, 4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	res, err := Pull(testContext(t), o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Delta || res.Bytes != writes*4096 {
		t.Errorf("result: delta %v, %d bytes; want a delta of %d bytes", res.Delta, res.Bytes, writes*4096)
	}
	if wantSkipped := int64(size - (writes+1)*DeltaChunk); res.SkippedBytes != wantSkipped {
		t.Errorf("%d bytes skipped, want %d (all but the nine chunks that changed)", res.SkippedBytes, wantSkipped)
	}
	a, b := readAll(t, src), readAll(t, o.Base)
	if !bytes.Equal(a, b) {
		t.Fatal("the patched image differs from the source")
	}
	if sa, sb := testutil.Lstat(t, src), testutil.Lstat(t, o.Base); sb.Size != size || sb.Blocks > sa.Blocks {
		t.Errorf("patched image: %d bytes, %d blocks; want %d bytes, at most the source's %d blocks", sb.Size, sb.Blocks, size, sa.Blocks)
	}
	if got := testutil.Seek(t, o.Base, 40<<20, unix.SEEK_HOLE); got != 40<<20 {
		t.Errorf("the punched block is not a hole in the copy (next hole at %d)", got)
	}
	if ents, _ := os.ReadDir(filepath.Dir(o.Base)); len(ents) != 1 {
		t.Errorf("the copy's parent holds %d entries, want 1", len(ents))
	}
}

func readAll(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// oldServer answers as a server of protocol version 1 does: a request of a
// later version is refused as invalid, a version 1 request gets a version 1
// header (no server time) and recs.
func oldServer(t *testing.T, recs []rec) (addr string, client *tls.Config) {
	return scriptedServer(t, func(conn net.Conn) {
		_, p, err := newFrameReader(conn).next()
		if err != nil {
			return
		}
		if v, _ := binary.Uvarint(p); v != 1 {
			fw := newFrameWriter(conn)
			var e enc
			_ = fw.frame(fError, encodeError(&e, fmt.Errorf("%w: protocol version %d, this server speaks 1", ErrProtocol, v)))
			_ = fw.flush()
			return
		}
		answer(conn, header{Version: 1, Kind: KindTree, SizeBytes: 4096, Generation: "g"}, recs)
	})
}

// A node not upgraded yet speaks protocol version 1: a pull from it goes on in
// version 1 (without the server's start time), and a delta pull receives the
// source whole and exchanges it with its base.
func TestPullFromVersion1Server(t *testing.T) {
	testutil.RequireRoot(t)
	addr, cfg := oldServer(t, []rec{rFile("f", 4, 0), rData(0, "data"), rFileEnd(), rLeave()})
	dest := filepath.Join(t.TempDir(), "data")
	res, err := Pull(testContext(t), PullOptions{Addr: addr, TLS: cfg, ID: "vol", Dest: dest, RetryWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	testutil.AssertContent(t, filepath.Join(dest, "f"), "data")
	if res.Attempts != 2 || !res.ServerTime.IsZero() {
		t.Errorf("result %+v: want a second attempt in version 1, no server time", res)
	}
	testutil.WriteFile(t, filepath.Join(dest, "f"), "old!")
	testutil.WriteFile(t, filepath.Join(dest, "extra"), "x")
	res, err = Pull(testContext(t), PullOptions{Addr: addr, TLS: cfg, ID: "vol", Base: dest, BaseGeneration: "g",
		BaseSince: time.Now(), RetryWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	testutil.AssertContent(t, filepath.Join(dest, "f"), "data")
	if _, err := os.Lstat(filepath.Join(dest, "extra")); err == nil || res.Delta {
		t.Errorf("delta pull from a version 1 server: delta %v, extra file %v; want the source whole", res.Delta, err)
	}
}
