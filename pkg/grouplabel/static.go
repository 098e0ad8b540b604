package grouplabel

import (
	"context"
	"slices"

	"github.com/berth-csi/berth/pkg/storage"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/klog/v2"
)

// syncStatic labels a pre-provisioned VolumeSnapshotContent of the driver (one that
// names a snapshotHandle and no volume) whose snapshot lies in one of SharedPools,
// for this node, and reports whether it was such a content.
//
// csi-snapshotter with --node-deployment takes only the contents labelled with its
// node, and nothing labels a pre-provisioned one: the content Velero's CSI restore
// makes for a backup (storage/backup.go) would never become ready. Its snapshot lies
// in a shared pool that every node serving the pool reads, so any of them may take
// it: the first labeller's patch wins, the others' fail with Conflict.
func (l *Labeller) syncStatic(ctx context.Context, c *unstructured.Unstructured) (Outcome, bool, error) {
	snap, _, _ := unstructured.NestedString(c.Object, "spec", "source", "snapshotHandle")
	vol, _, _ := unstructured.NestedString(c.Object, "spec", "source", "volumeHandle")
	if snap == "" || vol != "" || len(l.SharedPools) == 0 {
		return Ignored, false, nil
	}
	id, err := storage.ParseSnapshotID(snap)
	if err != nil || !slices.Contains(l.SharedPools, id.Pool) {
		return Ignored, true, nil
	}
	logger := klog.FromContext(ctx).WithValues("volumeSnapshotContent", c.GetName(), "snapshotHandle", snap)
	if err := l.label(ctx, c, l.Members); err != nil {
		if apierrors.IsConflict(err) {
			logger.V(4).Info("Pre-provisioned content taken by another node or changed before it was labelled")
			return Ignored, true, nil
		}
		return Ignored, true, err
	}
	logger.V(2).Info("Pre-provisioned content of a shared pool's snapshot labelled for this node's csi-snapshotter", "node", l.Node)
	return Labelled, true, nil
}
