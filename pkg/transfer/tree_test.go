package transfer

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
)

// A tree arrives as it is: every kind of entry, holes, hard links, owners,
// modes, times, xattrs; symlinks (those pointing out of the volume too) copied
// as links, never followed on either side.
func TestPullTree(t *testing.T) {
	testutil.RequireRoot(t)
	n := startServer(t, ServerOptions{})
	base := t.TempDir()
	src, outside := filepath.Join(base, "vol"), filepath.Join(base, "outside")
	testutil.MkdirAll(t, src)
	fx := testutil.BuildTreeFixture(t, src, outside)
	n.sources.add("b1-default-0123", Source{Kind: KindTree, Path: src, SizeBytes: 1 << 30, AccessType: "mount", Generation: "g1"})

	dest := filepath.Join(t.TempDir(), "data")
	prog := &Progress{}
	o := n.pullOptions(t, "b1-default-0123", dest)
	o.Progress = prog
	res, err := Pull(testContext(t), o)
	if err != nil {
		t.Fatal(err)
	}
	want := testutil.CheckTreeCopy(t, src, dest, fx)
	testutil.CheckTreeData(t, dest, fx)
	if res.Kind != KindTree || res.SizeBytes != 1<<30 || res.AccessType != "mount" || res.Attempts != 1 {
		t.Errorf("result %+v", res)
	}
	// Data only: the holes of the 10 GiB sparse file did not travel.
	if wantBytes := int64(testutil.TreeRandomSize + testutil.TreeSparseData + 1<<10); res.Bytes > wantBytes ||
		res.Bytes < testutil.TreeRandomSize+testutil.TreeSparseData {
		t.Errorf("%d bytes of data received, want about %d", res.Bytes, wantBytes)
	}
	if got := prog.Entries.Load(); got < want.Files+want.Dirs-1+want.Symlinks+want.Specials {
		t.Errorf("progress: %d entries, want at least %+v", got, want)
	}
	testutil.AssertContent(t, fx.Host, "host data")
	if x := testutil.Xattrs(t, fx.Host); len(x) != 0 {
		t.Errorf("host file got xattrs %q: a symlink was followed", x)
	}
	if got := testutil.ListTree(t, outside); !slices.Equal(got, fx.HostBefore) {
		t.Errorf("outside changed:\n%v\nwant\n%v", got, fx.HostBefore)
	}
	// Committed: the staging directory is gone, only the copy is left.
	if ents, _ := os.ReadDir(filepath.Dir(dest)); len(ents) != 1 {
		t.Errorf("destination parent holds %d entries, want 1", len(ents))
	}
	if _, closed := n.sources.counts(); closed != 1 {
		t.Errorf("source closed %d times, want 1", closed)
	}
}
