package kubectlberth

import (
	"context"
	"fmt"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// A backup is a VolumeSnapshot taken with a class of the driver whose parameter
// backupPool names a shared pool: its content's snapshotHandle is
// s1-<backupPool>-<32 hex>, on a filesystem every node mounts, so any node restores it.

// paramBackupPool is the VolumeSnapshotClass parameter that makes its snapshots backups.
const paramBackupPool = "backupPool"

var (
	vsResource      = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshots"}
	vsClassResource = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotclasses"}
)

// backup is a VolumeSnapshot fit to restore, and what the report says of it.
type backup struct {
	name        string
	pool        string
	handle      string
	created     time.Time
	restoreSize *resource.Quantity
}

// chooseBackup is the snapshot named (which must be a backup of the claim), or the
// claim's latest backup by status.creationTime.
func (o *Options) chooseBackup(ctx context.Context, c *Clients, ns, claim, named string) (*backup, error) {
	if named != "" {
		b, why, err := o.inspectBackup(ctx, c, ns, named, claim)
		if err != nil {
			return nil, err
		}
		if why != "" {
			return nil, refuse(ErrNotBackup, "snapshot %s/%s is not a backup to restore claim %s from: %s", ns, named, claim, why)
		}
		return b, nil
	}
	list, err := c.Dynamic.Resource(vsResource).Namespace(ns).List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) {
		return nil, refuse(ErrNoBackup, "no ready backup of claim %s/%s: the VolumeSnapshot CRDs are not installed", ns, claim)
	}
	if err != nil {
		return nil, fmt.Errorf("list the VolumeSnapshots of namespace %s: %w", ns, err)
	}
	var best *backup
	var skipped []string
	for i := range list.Items {
		vs := &list.Items[i]
		if src, _, _ := unstructured.NestedString(vs.Object, "spec", "source", "persistentVolumeClaimName"); src != claim {
			continue
		}
		b, why, err := o.judgeBackup(ctx, c, vs)
		if err != nil {
			return nil, err
		}
		if why != "" {
			skipped = append(skipped, vs.GetName()+": "+why)
			continue
		}
		if best == nil || b.created.After(best.created) {
			best = b
		}
	}
	if best == nil {
		msg := fmt.Sprintf("no ready backup of claim %s/%s: take a VolumeSnapshot of it with a class of driver %s whose parameters name %s (a shared pool)",
			ns, claim, o.DriverName, paramBackupPool)
		if len(skipped) > 0 {
			msg += "; not backups: " + strings.Join(skipped, "; ")
		}
		return nil, refuse(ErrNoBackup, "%s", msg)
	}
	return best, nil
}

// inspectBackup reads snapshot ns/name and judges it as a backup of claim: why is ""
// when it is one, else what it lacks. err is for the API's failures only.
func (o *Options) inspectBackup(ctx context.Context, c *Clients, ns, name, claim string) (*backup, string, error) {
	vs, err := c.Dynamic.Resource(vsResource).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return &backup{name: name}, "VolumeSnapshot not found", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("read VolumeSnapshot %s/%s: %w", ns, name, err)
	}
	if src, _, _ := unstructured.NestedString(vs.Object, "spec", "source", "persistentVolumeClaimName"); src != claim {
		return &backup{name: name}, fmt.Sprintf("it was taken of claim %q", src), nil
	}
	return o.judgeBackup(ctx, c, vs)
}

// judgeBackup: ready, of a backup class of the driver, its content's handle in the
// class's backup pool, with a creation time.
func (o *Options) judgeBackup(ctx context.Context, c *Clients, vs *unstructured.Unstructured) (*backup, string, error) {
	b := &backup{name: vs.GetName()}
	if ready, _, _ := unstructured.NestedBool(vs.Object, "status", "readyToUse"); !ready {
		return b, "not readyToUse", nil
	}
	created, _, _ := unstructured.NestedString(vs.Object, "status", "creationTime")
	t, err := time.Parse(time.RFC3339, created)
	if err != nil {
		return b, fmt.Sprintf("status.creationTime %q unreadable", created), nil
	}
	b.created = t.UTC()
	if s, ok, _ := unstructured.NestedString(vs.Object, "status", "restoreSize"); ok {
		if q, err := resource.ParseQuantity(s); err == nil {
			b.restoreSize = &q
		}
	}

	className, _, _ := unstructured.NestedString(vs.Object, "spec", "volumeSnapshotClassName")
	if className == "" {
		return b, "it names no VolumeSnapshotClass", nil
	}
	class, err := c.Dynamic.Resource(vsClassResource).Get(ctx, className, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return b, fmt.Sprintf("its VolumeSnapshotClass %s is not found", className), nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("read VolumeSnapshotClass %s: %w", className, err)
	}
	if d, _, _ := unstructured.NestedString(class.Object, "driver"); d != o.DriverName {
		return b, fmt.Sprintf("its class %s is of driver %q, not %s", className, d, o.DriverName), nil
	}
	b.pool, _, _ = unstructured.NestedString(class.Object, "parameters", paramBackupPool)
	if b.pool == "" {
		return b, fmt.Sprintf("its class %s has no parameter %s: the snapshot stays on the claim's node", className, paramBackupPool), nil
	}

	content, _, _ := unstructured.NestedString(vs.Object, "status", "boundVolumeSnapshotContentName")
	if content == "" {
		return b, "no bound VolumeSnapshotContent", nil
	}
	vsc, err := c.Dynamic.Resource(vscResource).Get(ctx, content, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return b, fmt.Sprintf("its VolumeSnapshotContent %s is not found", content), nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("read VolumeSnapshotContent %s: %w", content, err)
	}
	b.handle, _, _ = unstructured.NestedString(vsc.Object, "status", "snapshotHandle")
	if !strings.HasPrefix(b.handle, "s1-"+b.pool+"-") {
		return b, fmt.Sprintf("its content %s's snapshotHandle %q is not in backup pool %s", content, b.handle, b.pool), nil
	}
	return b, "", nil
}
