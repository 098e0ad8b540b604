package clone

import (
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
)

const (
	treeTimeout = 30 * time.Second
	fsSize      = 1 << 30
	sparseSize  = testutil.TreeSparseSize
	sparseData  = testutil.TreeSparseData
	randomSize  = testutil.TreeRandomSize
	testUID     = testutil.TreeUID
	testGID     = testutil.TreeGID
)

// The fixture every tree copy is checked against lives in testutil, shared with
// pkg/transfer, which copies trees over the network.
type fixture = testutil.TreeFixture

var (
	buildFixture = testutil.BuildTreeFixture
	listTree     = testutil.ListTree
	checkData    = testutil.CheckTreeData
)

// checkCopy is testutil.CheckTreeCopy, with the counts as Stats.
func checkCopy(t *testing.T, src, dst string, fx *fixture) Stats {
	c := testutil.CheckTreeCopy(t, src, dst, fx)
	return Stats{Files: c.Files, Dirs: c.Dirs, Symlinks: c.Symlinks, Specials: c.Specials, Skipped: c.Skipped}
}
