package mover

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/berth-csi/berth/pkg/orphans"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
)

// copying provisions the temporary claim, a clone of the claim on the target node,
// while the claim's pods keep running, and waits until it is Bound. A long copy
// keeps the provisioner retrying: there is no timeout here. Then the copy's PV is
// made ready for the claim (prepare.go), the pods still running.
func (m *Mover) copying(ctx context.Context, mv *VolumeMove) (string, error) {
	st := &mv.Status
	switch {
	case st.TargetPV == "":
		return m.clone(ctx, mv)
	case st.TargetPVRecord == nil:
		return "", m.recordTarget(ctx, mv)
	}
	if msg, err := m.readyTarget(ctx, mv, "Copying"); err != nil || msg != "" {
		return msg, err
	}
	// The claim must still be the one copied, and the owners are read again:
	// replicas may have changed during a long copy, a pod that nothing can restart
	// may have come.
	pvc, err := m.Cluster.GetClaim(ctx, mv.Namespace, mv.Spec.Claim)
	if err != nil && !apierrors.IsNotFound(err) {
		return "", fmt.Errorf("read claim %s/%s: %w", mv.Namespace, mv.Spec.Claim, err)
	}
	if err != nil || pvc.UID != st.ClaimUID || pvc.Spec.VolumeName != st.SourcePV || pvc.DeletionTimestamp != nil {
		return "", fail(ErrClaimNotFound, "claim %s/%s was deleted or replaced during the copy", mv.Namespace, mv.Spec.Claim)
	}
	owners, err := m.owners(ctx, mv.Namespace, mv.Spec.Claim)
	if err != nil {
		return "", err
	}
	stop := m.nowMicro()
	st.Owners, st.StoppedAt = owners, &stop
	st.Phase, st.Message = PhaseStopping, "Stopping "+ownerList(owners)
	return "", nil
}

// clone makes the temporary claim and waits until it is bound on the target node;
// then its PV is written in the status.
func (m *Mover) clone(ctx context.Context, mv *VolumeMove) (string, error) {
	st := &mv.Status
	tmp, err := m.Cluster.GetClaim(ctx, mv.Namespace, st.TempClaim)
	if apierrors.IsNotFound(err) {
		if err := m.Cluster.CreateClaim(ctx, m.tempClaim(mv)); err != nil && !apierrors.IsAlreadyExists(err) {
			return "", fmt.Errorf("create temporary claim %s/%s: %w", mv.Namespace, st.TempClaim, err)
		}
		klog.FromContext(ctx).V(2).Info("Temporary claim created", "volumeMove", moveRef(mv), "tempClaim", st.TempClaim, "toNode", mv.Spec.ToNode)
		return m.copyWait(mv), nil
	}
	if err != nil {
		return "", fmt.Errorf("read temporary claim %s/%s: %w", mv.Namespace, st.TempClaim, err)
	}
	if tmp.Labels[LabelMove] != moveLabel(mv) {
		return "", fail(ErrConflict, "claim %s/%s exists and is not this move's (no label %s=%s)", mv.Namespace, st.TempClaim, LabelMove, moveLabel(mv))
	}
	if tmp.Status.Phase != corev1.ClaimBound || tmp.Spec.VolumeName == "" {
		return m.copyWait(mv), nil
	}
	pv, err := m.Cluster.GetPV(ctx, tmp.Spec.VolumeName)
	if err != nil {
		return "", fmt.Errorf("read PersistentVolume %s of temporary claim %s: %w", tmp.Spec.VolumeName, st.TempClaim, err)
	}
	handle, ok := orphans.HandleOf(pv, m.Driver)
	if !ok {
		return "", fail(ErrNotOurs, "PersistentVolume %s of temporary claim %s is not of driver %s", pv.Name, st.TempClaim, m.Driver)
	}
	if n := PVNode(pv); n != mv.Spec.ToNode {
		return "", fail(ErrBadTarget, "temporary claim %s was provisioned on node %q, not %s", st.TempClaim, n, mv.Spec.ToNode)
	}
	now := m.now()
	st.TargetPV, st.TempPVUID, st.TargetVolume, st.CopiedAt = pv.Name, pv.UID, handle, &now
	st.TargetReclaimPolicy = pv.Spec.PersistentVolumeReclaimPolicy
	st.Message = fmt.Sprintf("Copying: the copy is on node %s; making its PersistentVolume %s ready for claim %s", mv.Spec.ToNode, pv.Name, mv.Spec.Claim)
	return "", nil
}

func (m *Mover) copyWait(mv *VolumeMove) string {
	since := ""
	if mv.Status.StartedAt != nil {
		// In minutes: the message, written when it changes, is not rewritten at each poll.
		since = fmt.Sprintf(" (for %s)", m.now().Sub(mv.Status.StartedAt.Time).Truncate(time.Minute))
	}
	return fmt.Sprintf("Copying: waiting for temporary claim %s, a clone of %s, to be provisioned on node %s%s",
		mv.Status.TempClaim, mv.Spec.Claim, mv.Spec.ToNode, since)
}

// tempClaim is the clone of the claim to provision on the target node.
func (m *Mover) tempClaim(mv *VolumeMove) *corev1.PersistentVolumeClaim {
	rec := mv.Status.Claim
	spec := corev1.PersistentVolumeClaimSpec{StorageClassName: rec.Spec.StorageClassName, AccessModes: rec.Spec.AccessModes,
		VolumeMode: rec.Spec.VolumeMode, Resources: *rec.Spec.Resources.DeepCopy(), VolumeAttributesClassName: rec.Spec.VolumeAttributesClassName,
		DataSource: &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: mv.Spec.Claim}}
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: mv.Status.TempClaim, Namespace: mv.Namespace,
			Labels:      map[string]string{LabelMove: moveLabel(mv)},
			Annotations: map[string]string{AnnSelectedNode: mv.Spec.ToNode, AnnMove: moveRef(mv)}},
		Spec: spec,
	}
}

// deleteTempClaim deletes the temporary claim if it is the move's; gone: there
// is no claim of that name (any more).
func (m *Mover) deleteTempClaim(ctx context.Context, mv *VolumeMove) (gone bool, err error) {
	tmp, err := m.Cluster.GetClaim(ctx, mv.Namespace, mv.Status.TempClaim)
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read temporary claim %s/%s: %w", mv.Namespace, mv.Status.TempClaim, err)
	}
	if tmp.Labels[LabelMove] != moveLabel(mv) || tmp.DeletionTimestamp != nil {
		return false, nil
	}
	if err := m.Cluster.DeleteClaim(ctx, mv.Namespace, tmp.Name, tmp.UID); err != nil {
		return false, fmt.Errorf("delete temporary claim %s/%s: %w", mv.Namespace, tmp.Name, err)
	}
	klog.FromContext(ctx).V(2).Info("Temporary claim deleted", "volumeMove", moveRef(mv), "tempClaim", tmp.Name)
	return false, nil
}

// stopping scales the owners to 0 and waits until no pod holds the claim.
func (m *Mover) stopping(ctx context.Context, mv *VolumeMove) (string, error) {
	for _, o := range mv.Status.Owners {
		if err := m.scale(ctx, mv.Namespace, o, func(cur int32) (int32, bool) { return 0, cur != 0 }); err != nil {
			return "", err
		}
	}
	pods, err := m.Cluster.ListPods(ctx, mv.Namespace)
	if err != nil {
		return "", fmt.Errorf("list the pods of namespace %s: %w", mv.Namespace, err)
	}
	var holding []string
	for i := range pods {
		p := &pods[i]
		if !Holds(p, mv.Spec.Claim) {
			continue
		}
		o, err := m.ownerOf(ctx, p)
		if err != nil {
			return "", err
		}
		if !slices.ContainsFunc(mv.Status.Owners, func(x Owner) bool { return x.Kind == o.Kind && x.Name == o.Name }) {
			return "", fail(ErrPodNotOwned, "pod %s/%s of %s started using the claim during the move", p.Namespace, p.Name, o)
		}
		holding = append(holding, p.Name)
	}
	if len(holding) > 0 {
		return fmt.Sprintf("Stopping: waiting for pods %s to stop", strings.Join(holding, ", ")), nil
	}
	mv.Status.Phase, mv.Status.Message = PhaseSwitching, "Switching the claim to the copy on node "+mv.Spec.ToNode
	return "", nil
}

// scaleBack sets each owner that is at 0 to its recorded replicas.
func (m *Mover) scaleBack(ctx context.Context, mv *VolumeMove) error {
	for _, o := range mv.Status.Owners {
		if err := m.scale(ctx, mv.Namespace, o, func(cur int32) (int32, bool) { return o.Replicas, cur == 0 && o.Replicas != 0 }); err != nil {
			return err
		}
	}
	return nil
}

// scale sets an owner's replicas through its scale subresource, when want says so.
func (m *Mover) scale(ctx context.Context, ns string, o Owner, want func(cur int32) (int32, bool)) error {
	s, err := m.Cluster.GetScale(ctx, ns, o.Kind, o.Name)
	if apierrors.IsNotFound(err) {
		return nil // deleted meanwhile: nothing to stop or start
	}
	if err != nil {
		return fmt.Errorf("read the scale of %s: %w", o, err)
	}
	n, ok := want(s.Spec.Replicas)
	if !ok {
		return nil
	}
	s.Spec.Replicas = n
	if err := m.Cluster.UpdateScale(ctx, ns, o.Kind, s); err != nil {
		return fmt.Errorf("scale %s to %d: %w", o, n, err)
	}
	klog.FromContext(ctx).V(2).Info("Owner scaled", "kind", o.Kind, "name", o.Name, "namespace", ns, "replicas", n)
	return nil
}

func ownerList(owners []Owner) string {
	if len(owners) == 0 {
		return "nothing: no pod uses the claim"
	}
	var s []string
	for _, o := range owners {
		s = append(s, o.String())
	}
	return strings.Join(s, ", ")
}
