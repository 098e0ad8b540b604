// Package grouplabel labels Berth's VolumeGroupSnapshotContents for the node that
// holds their volumes, so that the csi-snapshotter sidecar of that node takes them.
//
// csi-snapshotter v8.7.0 with --node-deployment watches VolumeGroupSnapshotContents
// only through an informer filtered on snapshot.storage.kubernetes.io/managed-by=
// <its NODE_NAME> (cmd/csi-snapshotter/main.go), and the snapshot-controller, which
// labels VolumeSnapshotContents so from their PV's node affinity when run with
// --enable-distributed-snapshotting, creates VolumeGroupSnapshotContents without
// the label. Each node's labeller labels the contents whose member volumes are all
// on its node, and no other: docs/design.md, "Group snapshots".
package grouplabel

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/berth-csi/berth/pkg/orphans"
	"github.com/berth-csi/berth/pkg/storage"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/klog/v2"
)

// ManagedByLabel is the label csi-snapshotter's node-filtered informer selects on
// (utils.VolumeSnapshotContentManagedByLabel in external-snapshotter v8.7.0); its
// value is the node's name, the sidecar's NODE_NAME.
const ManagedByLabel = "snapshot.storage.kubernetes.io/managed-by"

// ContentResource is the VolumeGroupSnapshotContents' resource, at the version the
// v8.7.0 sidecar reads (groupsnapshot.storage.k8s.io/v1).
var ContentResource = schema.GroupVersionResource{
	Group: "groupsnapshot.storage.k8s.io", Version: "v1", Resource: "volumegroupsnapshotcontents",
}

// RefusedReason is the reason of the Warning event on a VolumeGroupSnapshot whose
// volumes are not all on one node.
const RefusedReason = "GroupSnapshotAcrossNodes"

// EventCreator creates events: client-go's EventInterface is one (a fake's in
// tests), and NewEventClient's.
type EventCreator interface {
	Create(ctx context.Context, ev *corev1.Event, opts metav1.CreateOptions) (*corev1.Event, error)
}

// Labeller labels the VolumeGroupSnapshotContents of Driver whose member volumes'
// PersistentVolumes all have Node in their node affinity (Berth's topology key),
// and the VolumeSnapshotContents of their members that the snapshot-controller
// makes once the group is taken (member.go).
type Labeller struct {
	Contents dynamic.ResourceInterface
	// Members: the VolumeSnapshotContents, of which it labels a group's members.
	Members dynamic.ResourceInterface
	PVs     orphans.PVLister
	// Events returns the event client of a namespace.
	Events   func(namespace string) EventCreator
	Driver   string
	Node     string
	PageSize int64 // 0: orphans.DefaultPageSize
	// SharedPools are the shared pools this node serves: a pre-provisioned
	// content of a snapshot in one of them is labelled for the first node that
	// gets to it (static.go).
	SharedPools []string
	// NoGroups: the cluster has no group snapshots; only VolumeSnapshotContents
	// are watched.
	NoGroups bool

	mu sync.Mutex // Sync and SyncMember run from two watches
	// decided: what each content's volumes said (their PersistentVolumes are
	// listed once per content, not at each update of it).
	decided map[types.UID]decision
	// seen: the nodes of volumes found lately, so that a group's members, made
	// just after it, need no listing of their own.
	seen map[string]seenNode
}

type seenNode struct {
	node string
	at   time.Time
}

// seenFor is how long a volume's node found in a listing is used without another.
// A volume never changes node; the bound keeps the map small.
const seenFor = 10 * time.Minute

// decision: the node that labels a content (its volumes' node; for volumes on
// several nodes the node of the first that has one, in byte order, the group's
// home; "" when none has a node) and whether its volumes are on several nodes.
type decision struct {
	owner   string
	refused bool
	member  bool // a member's VolumeSnapshotContent (SyncMember)
}

// Outcome is what Sync did with a content.
type Outcome int

const (
	// Ignored: not Berth's, already labelled, pre-provisioned, or decided before.
	Ignored Outcome = iota
	// Labelled for this node.
	Labelled
	// OtherNode: another node labels it (or none, for volumes of no node).
	OtherNode
	// Refused: its volumes are on several nodes; left unlabelled.
	Refused
	// Released: a refused content being deleted, labelled for this node so that
	// its csi-snapshotter removes the finalizer the snapshot-controller put on it.
	Released
)

func (o Outcome) String() string {
	return [...]string{"ignored", "labelled", "otherNode", "refused", "released"}[o]
}

// Sync labels one content if it is this node's. An error (the PersistentVolumes
// not listed, the patch failed) is worth retrying; a decision is not.
//
// A content is this node's when its volumes are all here. One whose volumes are on
// several nodes is refused (one Warning event, from its owner) and stays pending,
// but once deleted its owner labels it too: the snapshot-controller gave it a
// finalizer that only a csi-snapshotter removes, and no sidecar has seen it, so
// nothing of it was made and the sidecar just lets it go.
func (l *Labeller) Sync(ctx context.Context, c *unstructured.Unstructured) (Outcome, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	driver, _, _ := unstructured.NestedString(c.Object, "spec", "driver")
	handles, _, _ := unstructured.NestedStringSlice(c.Object, "spec", "source", "volumeHandles")
	if driver != l.Driver || c.GetLabels()[ManagedByLabel] != "" || len(handles) == 0 {
		return Ignored, nil
	}
	logger := klog.FromContext(ctx).WithValues("volumeGroupSnapshotContent", c.GetName())
	deleting := c.GetDeletionTimestamp() != nil
	d, seen := l.decided[c.GetUID()]
	if !seen {
		nodes, err := l.nodesOf(ctx, handles)
		if err != nil {
			return Ignored, err
		}
		slices.Sort(handles)
		distinct := map[string]bool{}
		for _, h := range handles {
			distinct[nodes[h]] = true
		}
		d = decision{owner: ownerOf(handles, nodes), refused: len(distinct) > 1}
		if l.decided == nil {
			l.decided = map[types.UID]decision{}
		}
		l.decided[c.GetUID()] = d
		if d.refused && d.owner == l.Node && !deleting {
			msg := describe(handles, nodes)
			logger.Info("Refused to label a group snapshot whose volumes are on several nodes; it stays pending", "volumes", msg)
			l.warn(ctx, c, msg)
		}
	}
	switch {
	case d.owner != l.Node:
		if !seen {
			logger.V(4).Info("Group snapshot not of this node", "owner", d.owner)
			return OtherNode, nil
		}
		return Ignored, nil
	case d.refused && !deleting:
		if !seen {
			return Refused, nil
		}
		return Ignored, nil
	}
	if err := l.label(ctx, c, l.Contents); err != nil {
		if apierrors.IsConflict(err) {
			// Changed meanwhile: the watch brings the new version.
			logger.V(4).Info("Group snapshot changed before it was labelled")
			return Ignored, nil
		}
		return Ignored, err
	}
	if d.refused {
		logger.V(2).Info("Labelled a refused group snapshot being deleted, for this node's csi-snapshotter to let it go", "node", l.Node)
		return Released, nil
	}
	logger.V(2).Info("Group snapshot labelled for this node's csi-snapshotter", "node", l.Node, "volumes", len(handles))
	return Labelled, nil
}

// Forget drops what was decided of a content that has gone.
func (l *Labeller) Forget(uid types.UID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.decided, uid)
}

// keepOnly forgets the decisions on contents (members: VolumeSnapshotContents) that
// a new listing no longer shows: gone, or labelled, while no watch ran.
func (l *Labeller) keepOnly(members bool, listed map[types.UID]bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for uid, d := range l.decided {
		if d.member == members && !listed[uid] {
			delete(l.decided, uid)
		}
	}
}

// label sets the label by a merge patch that carries the resourceVersion read, so
// a content changed meanwhile (labelled by someone else) is not overwritten: the
// patch fails with Conflict and the content is read again.
func (l *Labeller) label(ctx context.Context, c *unstructured.Unstructured, r dynamic.ResourceInterface) error {
	meta := map[string]any{"labels": map[string]string{ManagedByLabel: l.Node}}
	if rv := c.GetResourceVersion(); rv != "" {
		meta["resourceVersion"] = rv
	}
	patch, err := json.Marshal(map[string]any{"metadata": meta})
	if err != nil {
		return err
	}
	if _, err := r.Patch(ctx, c.GetName(), types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("label %s %s: %w", c.GetKind(), c.GetName(), err)
	}
	return nil
}

// nodesOf maps each handle to the node of its PersistentVolume ("" when it has
// none, or no PersistentVolume names it), listing them page by page: the API has
// no field selector on spec.csi.volumeHandle.
func (l *Labeller) nodesOf(ctx context.Context, handles []string) (map[string]string, error) {
	pageSize := l.PageSize
	if pageSize <= 0 {
		pageSize = orphans.DefaultPageSize
	}
	now := time.Now()
	for h, e := range l.seen {
		if now.Sub(e.at) > seenFor {
			delete(l.seen, h)
		}
	}
	if l.seen == nil {
		l.seen = map[string]seenNode{}
	}
	out := make(map[string]string, len(handles))
	left := 0
	for _, h := range handles {
		out[h] = l.seen[h].node
		if out[h] == "" {
			left++
		}
	}
	opts := metav1.ListOptions{Limit: pageSize}
	for left > 0 {
		page, err := l.PVs.List(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("list PersistentVolumes: %w", err)
		}
		for i := range page.Items {
			pv := &page.Items[i]
			h, ok := orphans.HandleOf(pv, l.Driver)
			if n, want := out[h]; !ok || !want || n != "" {
				continue
			}
			if n := NodeOf(pv); n != "" {
				out[h] = n
				l.seen[h] = seenNode{node: n, at: now}
				left--
			}
		}
		if page.Continue == "" {
			break
		}
		opts.Continue = page.Continue
	}
	return out, nil
}

// NodeOf is the node a PersistentVolume of Berth is accessible from: the one value
// of Berth's topology key that every term of its required node affinity names. A
// volume of a shared pool, which has none, has no node ("").
func NodeOf(pv *corev1.PersistentVolume) string {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return ""
	}
	node := ""
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		found := ""
		for _, e := range term.MatchExpressions {
			if e.Key == storage.TopologyKey && e.Operator == corev1.NodeSelectorOpIn && len(e.Values) == 1 {
				found = e.Values[0]
			}
		}
		if found == "" || (node != "" && found != node) {
			return ""
		}
		node = found
	}
	return node
}

// ownerOf is the node of the first handle that has one.
func ownerOf(sorted []string, nodes map[string]string) string {
	for _, h := range sorted {
		if n := nodes[h]; n != "" {
			return n
		}
	}
	return ""
}

func describe(sorted []string, nodes map[string]string) string {
	parts := make([]string, len(sorted))
	for i, h := range sorted {
		n := nodes[h]
		if n == "" {
			n = "no node"
		}
		parts[i] = h + " on " + n
	}
	return strings.Join(parts, ", ")
}

// warn posts a Warning event on the VolumeGroupSnapshot the content was made for
// (where `kubectl describe` shows it to whoever asked), or on the content when it
// names none. Its name is fixed by the content, so a second report is AlreadyExists.
func (l *Labeller) warn(ctx context.Context, c *unstructured.Unstructured, volumes string) {
	if l.Events == nil {
		return
	}
	ref := corev1.ObjectReference{
		APIVersion: ContentResource.GroupVersion().String(), Kind: "VolumeGroupSnapshotContent",
		Name: c.GetName(), UID: c.GetUID(), ResourceVersion: c.GetResourceVersion(),
	}
	ns := metav1.NamespaceDefault
	vgs, _, _ := unstructured.NestedStringMap(c.Object, "spec", "volumeGroupSnapshotRef")
	if vgs["namespace"] != "" && vgs["name"] != "" {
		ref = corev1.ObjectReference{
			APIVersion: ContentResource.GroupVersion().String(), Kind: "VolumeGroupSnapshot",
			Namespace: vgs["namespace"], Name: vgs["name"], UID: types.UID(vgs["uid"]),
		}
		ns = vgs["namespace"]
	}
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: c.GetName() + ".berth-across-nodes", Namespace: ns},
		InvolvedObject: ref,
		Reason:         RefusedReason,
		Message: fmt.Sprintf("Berth takes a group snapshot on one node; the volumes of %s are on several (%s). "+
			"It stays pending: delete it and group volumes of one node.", c.GetName(), volumes),
		Type:           corev1.EventTypeWarning,
		Source:         corev1.EventSource{Component: "berth-group-labeller", Host: l.Node},
		FirstTimestamp: now,
		LastTimestamp:  now,
		Count:          1,
	}
	if _, err := l.Events(ns).Create(ctx, ev, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		klog.FromContext(ctx).Error(err, "Cannot post the event of a refused group snapshot", "volumeGroupSnapshotContent", c.GetName())
	}
}
