package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/berth-csi/berth/pkg/storage/clone"
	"k8s.io/klog/v2"
)

// anchorFile is a second reflink of an image snapshot's image, made as the
// snapshot is committed and kept beside it, never read nor written:
//
//	<path>/snapshots/<hash>/image.anchor
//
// It is there for changed-block tracking. XFS reports an extent's sharing in
// FIEMAP (FIEMAP_EXTENT_SHARED, looked up in its refcount btree) and cuts every
// extent where that sharing changes. Once the volume rewrites a block after a
// snapshot, the snapshot alone holds the old block, so a map of the snapshot
// came back cut around every block rewritten since: two extents more per block,
// each one a refcount lookup, half of a delta's cost (docs/benchmarks.md). With
// the anchor every block of the snapshot stays shared, and its map is what its
// own extents are. It costs one reflink per snapshot, no data blocks.
//
// It is an optimisation only: a snapshot without one (made by an older Berth,
// or whose anchor could not be made) gives the same deltas, more slowly.
const anchorFile = "image.anchor"

// anchorImage reflinks the image in dir, a snapshot's entry not yet committed, to
// anchorFile, in pools whose snapshots serve changed-block tracking (image files,
// with reflinks). A failure is logged and the snapshot committed without it.
func (p *Pool) anchorImage(ctx context.Context, dir, snapshotID string) {
	if !p.blockImages() || !p.copyIsFast() { // as BlockMetadataServed asks
		return
	}
	name, _ := p.backend.Data()
	start := time.Now()
	anchor := filepath.Join(dir, anchorFile)
	_, err := clone.File(ctx, filepath.Join(dir, name), anchor, clone.Options{Reflink: clone.Always})
	logger := klog.FromContext(ctx).WithValues("snapshotID", snapshotID)
	if err != nil {
		if rerr := os.Remove(anchor); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			logger.Error(rerr, "Cannot remove a half-made image anchor; it goes with the snapshot")
		}
		logger.Error(err, "Cannot anchor the snapshot's image: changed-block deltas from it will map more extents")
		return
	}
	logger.V(4).Info("Snapshot image anchored", "took", time.Since(start))
}
