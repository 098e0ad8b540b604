package mover

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
)

// switching puts the claim on the copy, whose PV Copying made ready. Each sub-step
// reads where the cluster is and does the next thing, so that a rerun from any
// point finishes:
//
//  1. the copy's PV made ready, if Copying did not (a move that an older mover
//     brought to Switching);
//  2. the source PV set to Retain and annotated with the move, then the claim
//     deleted and made again on the target PV; Bound: Starting.
//
// From here on the move only goes forward: an obstacle is said and retried.
func (m *Mover) switching(ctx context.Context, mv *VolumeMove) (string, error) {
	st := &mv.Status
	ns, claim := mv.Namespace, mv.Namespace+"/"+mv.Spec.Claim
	cur, err := m.Cluster.GetClaim(ctx, ns, mv.Spec.Claim)
	switch {
	case apierrors.IsNotFound(err):
		cur = nil
	case err != nil:
		return "", fmt.Errorf("read claim %s: %w", claim, err)
	}
	if cur != nil && cur.UID != st.ClaimUID {
		if cur.Spec.VolumeName != st.TargetPV {
			return "", fmt.Errorf("claim %s was made again by someone else, not on PersistentVolume %s: delete it so that the move can finish", claim, st.TargetPV)
		}
		if cur.Status.Phase != corev1.ClaimBound {
			return fmt.Sprintf("Switching: waiting for claim %s to bind to PersistentVolume %s", claim, st.TargetPV), nil
		}
		now := m.now()
		st.SwitchedAt = &now
		st.Phase, st.Message = PhaseStarting, "Starting "+ownerList(st.Owners)+" on node "+mv.Spec.ToNode
		return "", nil
	}

	if st.TargetPVRecord == nil {
		if err := m.recordTarget(ctx, mv); err != nil {
			return "", err
		}
		return "", nil
	}
	if msg, err := m.readyTarget(ctx, mv, "Switching"); err != nil || msg != "" {
		return msg, err
	}

	if cur != nil && cur.UID == st.ClaimUID {
		if cur.DeletionTimestamp == nil {
			// The source volume outlives its claim: the resync reads it, and Cleaning
			// deletes it once the copy runs.
			if err := m.retain(ctx, &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: st.SourcePV}}, moveRef(mv)); err != nil {
				return "", err
			}
			if err := m.Cluster.DeleteClaim(ctx, ns, cur.Name, cur.UID); err != nil {
				return "", fmt.Errorf("delete claim %s: %w", claim, err)
			}
			klog.FromContext(ctx).V(2).Info("Claim deleted, to be made again", "volumeMove", moveRef(mv), "claim", claim)
		}
		return fmt.Sprintf("Switching: waiting for claim %s to be deleted%s", claim, finalizers(cur.Finalizers)), nil
	}
	if err := m.Cluster.CreateClaim(ctx, m.newClaim(mv)); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("create claim %s on PersistentVolume %s: %w", claim, st.TargetPV, err)
	}
	klog.FromContext(ctx).V(2).Info("Claim made again", "volumeMove", moveRef(mv), "claim", claim, "pv", st.TargetPV)
	return fmt.Sprintf("Switching: waiting for claim %s to bind to PersistentVolume %s", claim, st.TargetPV), nil
}

func finalizers(f []string) string {
	if len(f) == 0 {
		return ""
	}
	return "; finalizers: " + strings.Join(f, ", ")
}

// retain sets a PV's reclaim policy to Retain, and annotates it with the move
// unless ref is "".
func (m *Mover) retain(ctx context.Context, pv *corev1.PersistentVolume, ref string) error {
	p := map[string]any{"spec": map[string]any{"persistentVolumeReclaimPolicy": corev1.PersistentVolumeReclaimRetain}}
	if ref != "" {
		p["metadata"] = map[string]any{"annotations": map[string]string{AnnMove: ref}}
	}
	return m.patchPV(ctx, pv.Name, p)
}

func (m *Mover) patchPV(ctx context.Context, name string, p map[string]any) error {
	patch, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if err := m.Cluster.PatchPV(ctx, name, patch); err != nil {
		return fmt.Errorf("patch PersistentVolume %s with %s: %w", name, patch, err)
	}
	return nil
}

// targetPV is the temporary PV made again for the claim: the same volume, with
// berth.csi.io/resync-from the source volume and the driver as its provisioner
// (which deletes it, and its volume, when its claim goes and its policy is Delete).
func (m *Mover) targetPV(mv *VolumeMove) *corev1.PersistentVolume {
	st, rec := &mv.Status, mv.Status.TargetPVRecord
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: st.TargetPV, Labels: maps.Clone(rec.Labels), Annotations: map[string]string{}},
		Spec:       *rec.Spec.DeepCopy(),
	}
	for k, v := range rec.Annotations {
		if k != "pv.kubernetes.io/bound-by-controller" {
			pv.Annotations[k] = v
		}
	}
	pv.Annotations[annProvisionedBy] = m.Driver
	pv.Annotations[AnnMove] = moveRef(mv)
	pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: mv.Namespace, Name: mv.Spec.Claim}
	pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimRetain
	if pv.Spec.CSI != nil {
		attrs := maps.Clone(pv.Spec.CSI.VolumeAttributes)
		if attrs == nil {
			attrs = map[string]string{}
		}
		attrs[AnnResyncFrom] = st.SourceVolume
		pv.Spec.CSI.VolumeAttributes = attrs
	}
	return pv
}

// newClaim is the claim made again: its recorded labels, annotations and spec, on
// the target PV.
func (m *Mover) newClaim(mv *VolumeMove) *corev1.PersistentVolumeClaim {
	rec := mv.Status.Claim
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: mv.Spec.Claim, Namespace: mv.Namespace, Labels: maps.Clone(rec.Labels), Annotations: map[string]string{}},
		Spec:       *rec.Spec.DeepCopy(),
	}
	maps.Copy(pvc.Annotations, rec.Annotations)
	pvc.Annotations[AnnMove] = moveRef(mv)
	pvc.Spec.DataSource, pvc.Spec.DataSourceRef = nil, nil
	pvc.Spec.VolumeName = mv.Status.TargetPV
	return pvc
}

// starting gives the target PV its policy back, scales the owners back and waits
// until the claim's pods run on the target node (their first stage resyncs).
func (m *Mover) starting(ctx context.Context, mv *VolumeMove) (string, error) {
	st := &mv.Status
	policy := st.TargetReclaimPolicy
	if policy == "" {
		policy = corev1.PersistentVolumeReclaimDelete
	}
	target, err := m.Cluster.GetPV(ctx, st.TargetPV)
	if err != nil {
		return "", fmt.Errorf("read PersistentVolume %s: %w", st.TargetPV, err)
	}
	if target.Spec.PersistentVolumeReclaimPolicy != policy {
		if err := m.patchPV(ctx, st.TargetPV, map[string]any{"spec": map[string]any{"persistentVolumeReclaimPolicy": policy}}); err != nil {
			return "", err
		}
	}
	if err := m.scaleBack(ctx, mv); err != nil {
		return "", err
	}
	if !waited(st.Owners) && m.Image != "" && st.ReadBackAt == nil {
		if msg, err := m.readBack(ctx, mv); err != nil || msg != "" {
			return msg, err
		}
	}
	if waited(st.Owners) {
		pods, err := m.Cluster.ListPods(ctx, mv.Namespace)
		if err != nil {
			return "", fmt.Errorf("list the pods of namespace %s: %w", mv.Namespace, err)
		}
		running, waiting := 0, []string{}
		for i := range pods {
			p := &pods[i]
			if !Holds(p, mv.Spec.Claim) {
				continue
			}
			if p.Status.Phase == corev1.PodRunning && p.Spec.NodeName == mv.Spec.ToNode && p.DeletionTimestamp == nil {
				running++
			} else {
				waiting = append(waiting, p.Name)
			}
		}
		if running == 0 || len(waiting) > 0 {
			return fmt.Sprintf("Starting: waiting for the claim's pods to run on node %s (their first start copies what changed since the clone)%s",
				mv.Spec.ToNode, podList(waiting)), nil
		}
	}
	now := m.nowMicro()
	st.RunningAt = &now
	down := int64(math.Round(now.Sub(st.StoppedAt.Time).Seconds()))
	st.DowntimeSeconds = &down
	st.Phase, st.Message = PhaseCleaning, "Deleting the source volume "+st.SourceVolume+" on node "+st.SourceNode
	return "", nil
}

// waited: some owner had replicas, so the claim's pods are waited for.
func waited(owners []Owner) bool {
	for _, o := range owners {
		if o.Replicas > 0 {
			return true
		}
	}
	return false
}

func podList(p []string) string {
	if len(p) == 0 {
		return ""
	}
	return ": " + strings.Join(p, ", ")
}

// cleaning has the source node's provisioner delete the source volume (reclaim
// policy Delete on the Released source PV), waiting for it at most CleanupWait.
// A source PV whose policy was Retain before the move is kept, and so is one that
// no pod has staged the copy from yet (no owners and no read-back pod, Mover.Image
// unset: the first stage still resyncs).
func (m *Mover) cleaning(ctx context.Context, mv *VolumeMove) (string, error) {
	st := &mv.Status
	src, err := m.Cluster.GetPV(ctx, st.SourcePV)
	done := fmt.Sprintf("Moved claim %s from node %s to node %s", mv.Spec.Claim, st.SourceNode, mv.Spec.ToNode)
	if st.DowntimeSeconds != nil && waited(st.Owners) {
		done += fmt.Sprintf(", %ds without its pods", *st.DowntimeSeconds)
	}
	switch {
	case apierrors.IsNotFound(err):
		return m.succeed(mv, done+"; source volume deleted"), nil
	case err != nil:
		return "", fmt.Errorf("read source PersistentVolume %s: %w", st.SourcePV, err)
	case src.Spec.ClaimRef != nil && src.Spec.ClaimRef.UID != st.ClaimUID || src.Annotations[AnnMove] != moveRef(mv):
		return m.succeed(mv, done+fmt.Sprintf("; source PersistentVolume %s was not deleted: it is not the move's any more", src.Name)), nil
	case st.SourceReclaimPolicy == corev1.PersistentVolumeReclaimRetain:
		return m.succeed(mv, done+fmt.Sprintf("; source PersistentVolume %s kept: its reclaim policy was Retain", src.Name)), nil
	case !waited(st.Owners) && st.ReadBackAt == nil:
		return m.succeed(mv, done+fmt.Sprintf("; source PersistentVolume %s kept (Retain): no pod has used the copy yet, whose first stage copies what changed from it; delete it once a pod has run on node %s", src.Name, mv.Spec.ToNode)), nil
	}
	if src.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
		if err := m.patchPV(ctx, src.Name, map[string]any{"spec": map[string]any{"persistentVolumeReclaimPolicy": corev1.PersistentVolumeReclaimDelete}}); err != nil {
			return "", err
		}
	}
	if since := st.RunningAt; since != nil && m.now().Sub(since.Time) >= m.cleanupWait() {
		return m.succeed(mv, done+fmt.Sprintf("; source PersistentVolume %s not deleted after %s (reclaim policy Delete): see the csi-provisioner of node %s",
			src.Name, m.cleanupWait(), st.SourceNode)), nil
	}
	return fmt.Sprintf("Cleaning: waiting for the csi-provisioner of node %s to delete PersistentVolume %s", st.SourceNode, src.Name), nil
}

func (m *Mover) cleanupWait() time.Duration {
	if m.CleanupWait > 0 {
		return m.CleanupWait
	}
	return DefaultCleanupWait
}

// succeed ends the move; "" as step's answer: the status changed.
func (m *Mover) succeed(mv *VolumeMove, msg string) string {
	now := m.now()
	mv.Status.Phase, mv.Status.FinishedAt, mv.Status.Message = PhaseSucceeded, &now, msg
	return ""
}
