package grouplabel

import (
	"context"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// MemberResource is the VolumeSnapshotContents' resource.
var MemberResource = schema.GroupVersionResource{
	Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotcontents",
}

// GroupHandleAnnotation marks the VolumeSnapshotContent of a group's member
// (utils.VolumeGroupSnapshotHandleAnnotation in external-snapshotter v8.7.0).
const GroupHandleAnnotation = "groupsnapshot.storage.k8s.io/volumeGroupSnapshotHandle"

// SyncMember labels the VolumeSnapshotContent of a group's member for the node of
// its volume, when that is this node.
//
// Once a group is taken, the snapshot-controller makes a VolumeSnapshot and a
// VolumeSnapshotContent per member, without the label it gives the contents of
// snapshots of their own (buildVolumeSnapshotContentSpecForGroupSnapshot in
// v8.7.0). It sets their status itself, so they are ready unseen, but it also gives
// them the finalizer that only a csi-snapshotter removes: unlabelled, a member's
// content would never go, and its VolumeSnapshot and group with it. Only group
// members are labelled, and pre-provisioned contents of a shared pool's snapshot
// (static.go): a snapshot of its own is the snapshot-controller's to label
// (--enable-distributed-snapshotting).
func (l *Labeller) SyncMember(ctx context.Context, c *unstructured.Unstructured) (Outcome, error) {
	driver, _, _ := unstructured.NestedString(c.Object, "spec", "driver")
	handle, _, _ := unstructured.NestedString(c.Object, "spec", "source", "volumeHandle")
	_, member := c.GetAnnotations()[GroupHandleAnnotation]
	if driver != l.Driver || c.GetLabels()[ManagedByLabel] != "" {
		return Ignored, nil
	}
	if !member {
		out, _, err := l.syncStatic(ctx, c)
		return out, err
	}
	if handle == "" {
		return Ignored, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	logger := klog.FromContext(ctx).WithValues("volumeSnapshotContent", c.GetName())
	d, seen := l.decided[c.GetUID()]
	if !seen {
		nodes, err := l.nodesOf(ctx, []string{handle})
		if err != nil {
			return Ignored, err
		}
		d = decision{owner: nodes[handle], member: true}
		if l.decided == nil {
			l.decided = map[types.UID]decision{}
		}
		l.decided[c.GetUID()] = d
	}
	if d.owner != l.Node {
		if !seen {
			logger.V(4).Info("Group member not of this node", "owner", d.owner)
			return OtherNode, nil
		}
		return Ignored, nil
	}
	if err := l.label(ctx, c, l.Members); err != nil {
		if apierrors.IsConflict(err) {
			logger.V(4).Info("Group member changed before it was labelled")
			return Ignored, nil
		}
		return Ignored, err
	}
	logger.V(2).Info("Group member labelled for this node's csi-snapshotter", "node", l.Node)
	return Labelled, nil
}
