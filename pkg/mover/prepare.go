package mover

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/klog/v2"
)

// The copy's PV is made ready for the claim while the claim's pods still run, at
// the end of Copying, so that the pods' downtime holds only the claim's own
// exchange (Switching):
//
//  1. recordTarget: the temporary PV set to Retain and recorded in the status;
//  2. readyTarget: the temporary claim deleted, then the temporary PV's object (its
//     volume kept), then the target PV made from the record, bound ahead to the
//     claim's name (it stays Available: the claim is still bound to the source PV);
//
// and undoTarget gives the copy's volume back to its provisioner when the move
// rolls back after 1.

// recordTarget sets the temporary PV to Retain and records it in the status.
func (m *Mover) recordTarget(ctx context.Context, mv *VolumeMove) error {
	st := &mv.Status
	tmp, err := m.Cluster.GetPV(ctx, st.TargetPV)
	if err != nil {
		return fmt.Errorf("read temporary PersistentVolume %s: %w", st.TargetPV, err)
	}
	if tmp.UID != st.TempPVUID {
		return fail(ErrConflict, "PersistentVolume %s is not the temporary claim's any more (UID %s, not %s)", st.TargetPV, tmp.UID, st.TempPVUID)
	}
	if err := m.retain(ctx, tmp, ""); err != nil {
		return err
	}
	st.TargetPVRecord = &PVRecord{Labels: tmp.Labels, Annotations: tmp.Annotations, Spec: *tmp.Spec.DeepCopy()}
	st.TargetPVRecord.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimRetain
	return nil
}

// readyTarget does step 2 from wherever it stands: "" once the target PV exists,
// else what it waits for. what names the phase in the messages.
func (m *Mover) readyTarget(ctx context.Context, mv *VolumeMove, what string) (string, error) {
	st := &mv.Status
	claim := mv.Namespace + "/" + mv.Spec.Claim
	if gone, err := m.deleteTempClaim(ctx, mv); err != nil || !gone {
		return fmt.Sprintf("%s: waiting for temporary claim %s to be deleted", what, st.TempClaim), err
	}

	target, err := m.Cluster.GetPV(ctx, st.TargetPV)
	switch {
	case apierrors.IsNotFound(err):
		if err := m.Cluster.CreatePV(ctx, m.targetPV(mv)); err != nil {
			return "", fmt.Errorf("create PersistentVolume %s for claim %s: %w", st.TargetPV, claim, err)
		}
		klog.FromContext(ctx).V(2).Info("Target PersistentVolume created", "volumeMove", moveRef(mv), "pv", st.TargetPV, "resyncFrom", st.SourceVolume)
		return "", nil
	case err != nil:
		return "", fmt.Errorf("read PersistentVolume %s: %w", st.TargetPV, err)
	case target.UID == st.TempPVUID:
		if target.DeletionTimestamp == nil {
			if err := m.Cluster.DeletePV(ctx, target.Name, target.UID); err != nil {
				return "", fmt.Errorf("delete the object of temporary PersistentVolume %s: %w", target.Name, err)
			}
		}
		return fmt.Sprintf("%s: waiting for the object of temporary PersistentVolume %s to be deleted (its volume is kept: reclaim policy Retain)%s",
			what, target.Name, finalizers(target.Finalizers)), nil
	case target.Annotations[AnnMove] != moveRef(mv):
		return "", fmt.Errorf("PersistentVolume %s was made again by someone else: the move cannot make it for claim %s", st.TargetPV, claim)
	}
	return "", nil
}

// undoTarget, in a rollback, has the target node's provisioner delete the copy's
// volume, wherever readyTarget stopped: the PV that holds it (the temporary one, or
// the one made from the record, or one made again from the record if the mover
// stopped between the two) is set to Delete and bound to the temporary claim,
// which is or will be gone, so that the PV controller releases it.
func (m *Mover) undoTarget(ctx context.Context, mv *VolumeMove) error {
	st := &mv.Status
	rec := st.TargetPVRecord
	pv, err := m.Cluster.GetPV(ctx, st.TargetPV)
	switch {
	case apierrors.IsNotFound(err) && rec == nil:
		// Never recorded: the temporary PV was never made Retain, or is gone.
		return nil
	case apierrors.IsNotFound(err):
		released := m.targetPV(mv)
		released.Spec.ClaimRef = rec.Spec.ClaimRef.DeepCopy()
		released.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimDelete
		if err := m.Cluster.CreatePV(ctx, released); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create PersistentVolume %s to delete the copy: %w", st.TargetPV, err)
		}
		klog.FromContext(ctx).V(2).Info("Copy's PersistentVolume made again, released, to delete the copy", "volumeMove", moveRef(mv), "pv", st.TargetPV)
		return nil
	case err != nil:
		return fmt.Errorf("read PersistentVolume %s: %w", st.TargetPV, err)
	case pv.UID == st.TempPVUID:
		if pv.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimDelete {
			return nil
		}
		return m.patchPV(ctx, pv.Name, map[string]any{"spec": map[string]any{"persistentVolumeReclaimPolicy": corev1.PersistentVolumeReclaimDelete}})
	case pv.Annotations[AnnMove] != moveRef(mv) || rec == nil || rec.Spec.ClaimRef == nil:
		return nil
	}
	ref := rec.Spec.ClaimRef
	return m.patchPV(ctx, pv.Name, map[string]any{"spec": map[string]any{
		"persistentVolumeReclaimPolicy": corev1.PersistentVolumeReclaimDelete,
		"claimRef":                      map[string]any{"namespace": ref.Namespace, "name": ref.Name, "uid": ref.UID},
	}})
}
