package mover

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/berth-csi/berth/pkg/orphans"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// pending validates the move and records what it will need: the source, the claim
// as it is to be made again, the owners of its pods. Nothing is changed yet.
func (m *Mover) pending(ctx context.Context, mv *VolumeMove) (string, error) {
	ns, name, to := mv.Namespace, mv.Spec.Claim, mv.Spec.ToNode
	claim := ns + "/" + name
	if name == "" || to == "" {
		return "", fail(ErrBadSpec, "spec.claim and spec.toNode are required")
	}
	pvc, err := m.Cluster.GetClaim(ctx, ns, name)
	if apierrors.IsNotFound(err) {
		return "", fail(ErrClaimNotFound, "claim %s not found", claim)
	}
	if err != nil {
		return "", fmt.Errorf("read claim %s: %w", claim, err)
	}
	if pvc.DeletionTimestamp != nil {
		return "", fail(ErrClaimNotFound, "claim %s is being deleted", claim)
	}
	if pvc.Status.Phase != corev1.ClaimBound || pvc.Spec.VolumeName == "" {
		return "", fail(ErrNotBound, "claim %s is not Bound (phase %s): there is no volume to move", claim, pvc.Status.Phase)
	}
	pv, err := m.Cluster.GetPV(ctx, pvc.Spec.VolumeName)
	if err != nil {
		return "", fmt.Errorf("read PersistentVolume %s of claim %s: %w", pvc.Spec.VolumeName, claim, err)
	}
	handle, ok := orphans.HandleOf(pv, m.Driver)
	if !ok {
		return "", fail(ErrNotOurs, "PersistentVolume %s of claim %s is not of driver %s", pv.Name, claim, m.Driver)
	}
	from := PVNode(pv)
	if from == "" {
		return "", fail(ErrSharedVolume, "claim %s is on a shared pool: every node reaches it, there is nothing to move", claim)
	}
	if err := m.checkTarget(ctx, from, to); err != nil {
		return "", err
	}
	owners, err := m.owners(ctx, ns, name)
	if err != nil {
		return "", err
	}
	if other, err := m.busy(ctx, mv, owners); err != nil || other != "" {
		return other, err
	}

	st := &mv.Status
	now := m.now()
	st.SourceNode, st.SourcePV, st.SourceVolume, st.ClaimUID = from, pv.Name, handle, pvc.UID
	st.SourceReclaimPolicy = pv.Spec.PersistentVolumeReclaimPolicy
	st.Claim = RecordClaim(pvc, AnnMove)
	if c, ok := pv.Spec.Capacity[corev1.ResourceStorage]; ok {
		// The clone is at least the volume's size (a claim's request may lag an expansion).
		if req := st.Claim.Spec.Resources.Requests[corev1.ResourceStorage]; req.Cmp(c) < 0 {
			st.Claim.Spec.Resources.Requests = st.Claim.Spec.Resources.Requests.DeepCopy()
			if st.Claim.Spec.Resources.Requests == nil {
				st.Claim.Spec.Resources.Requests = corev1.ResourceList{}
			}
			st.Claim.Spec.Resources.Requests[corev1.ResourceStorage] = c.DeepCopy()
		}
	}
	st.Owners, st.StartedAt, st.TempClaim = owners, &now, TempClaimName(mv)
	st.Phase, st.Message = PhaseCopying, fmt.Sprintf("Moving claim %s from node %s to node %s", claim, from, to)
	return "", nil
}

// checkTarget: the target is another node, Ready, and runs the driver.
func (m *Mover) checkTarget(ctx context.Context, from, to string) error {
	if to == from {
		return fail(ErrBadTarget, "the claim is already on node %s", to)
	}
	n, err := m.Cluster.GetNode(ctx, to)
	if apierrors.IsNotFound(err) {
		return fail(ErrBadTarget, "node %s not found", to)
	}
	if err != nil {
		return fmt.Errorf("read node %s: %w", to, err)
	}
	if !NodeReady(n) {
		return fail(ErrBadTarget, "node %s is not Ready", to)
	}
	csiNode, err := m.Cluster.GetCSINode(ctx, to)
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("read CSINode %s: %w", to, err)
	}
	if err != nil || !slices.ContainsFunc(csiNode.Spec.Drivers, func(d storagev1.CSINodeDriver) bool { return d.Name == m.Driver }) {
		return fail(ErrBadTarget, "driver %s is not registered on node %s (its CSINode): no node plugin runs there", m.Driver, to)
	}
	return nil
}

// owners are the controllers of the pods that hold the claim, with their replicas
// now; a pod that no StatefulSet or Deployment owns is a refusal.
func (m *Mover) owners(ctx context.Context, ns, claim string) ([]Owner, error) {
	pods, err := m.Cluster.ListPods(ctx, ns)
	if err != nil {
		return nil, fmt.Errorf("list the pods of namespace %s: %w", ns, err)
	}
	var out []Owner
	for i := range pods {
		p := &pods[i]
		if !Holds(p, claim) {
			continue
		}
		o, err := m.ownerOf(ctx, p)
		if err != nil {
			return nil, err
		}
		if !slices.ContainsFunc(out, func(x Owner) bool { return x.Kind == o.Kind && x.Name == o.Name }) {
			out = append(out, o)
		}
	}
	return out, nil
}

// ownerOf is the StatefulSet or Deployment (through its ReplicaSet) of a pod.
func (m *Mover) ownerOf(ctx context.Context, p *corev1.Pod) (Owner, error) {
	ns, pod := p.Namespace, p.Namespace+"/"+p.Name
	ref := metav1.GetControllerOf(p)
	if ref == nil {
		return Owner{}, fail(ErrPodNotOwned, "pod %s uses the claim and has no controller: bare pods cannot be restarted elsewhere (run it under a StatefulSet or a Deployment, or delete it)", pod)
	}
	apps := strings.HasPrefix(ref.APIVersion, "apps/")
	switch {
	case apps && ref.Kind == "StatefulSet":
		s, err := m.Cluster.GetStatefulSet(ctx, ns, ref.Name)
		if err != nil {
			return Owner{}, fmt.Errorf("read StatefulSet %s/%s of pod %s: %w", ns, ref.Name, pod, err)
		}
		if r := s.Spec.PersistentVolumeClaimRetentionPolicy; r != nil && r.WhenScaled == appsv1.DeletePersistentVolumeClaimRetentionPolicyType {
			return Owner{}, fail(ErrScaleDeletes, "StatefulSet %s/%s deletes its claims when scaled down (persistentVolumeClaimRetentionPolicy.whenScaled: Delete): stopping it would delete the claim; set whenScaled to Retain for the move", ns, s.Name)
		}
		return Owner{Kind: "StatefulSet", Name: s.Name, Replicas: ptr.Deref(s.Spec.Replicas, 1)}, nil
	case apps && ref.Kind == "ReplicaSet":
		rs, err := m.Cluster.GetReplicaSet(ctx, ns, ref.Name)
		if err != nil {
			return Owner{}, fmt.Errorf("read ReplicaSet %s/%s of pod %s: %w", ns, ref.Name, pod, err)
		}
		dref := metav1.GetControllerOf(rs)
		if dref == nil || dref.Kind != "Deployment" {
			return Owner{}, fail(ErrPodNotOwned, "pod %s uses the claim and its ReplicaSet %s belongs to no Deployment: only the pods of StatefulSets and Deployments can be stopped and started elsewhere", pod, rs.Name)
		}
		d, err := m.Cluster.GetDeployment(ctx, ns, dref.Name)
		if err != nil {
			return Owner{}, fmt.Errorf("read Deployment %s/%s of pod %s: %w", ns, dref.Name, pod, err)
		}
		return Owner{Kind: "Deployment", Name: d.Name, Replicas: ptr.Deref(d.Spec.Replicas, 1)}, nil
	}
	return Owner{}, fail(ErrPodNotOwned, "pod %s uses the claim and is owned by %s %s: only the pods of StatefulSets and Deployments can be stopped and started elsewhere", pod, ref.Kind, ref.Name)
}

// busy names another unfinished move of the namespace that moves the same claim or
// stops one of the same owners: this one waits for it.
func (m *Mover) busy(ctx context.Context, mv *VolumeMove, owners []Owner) (string, error) {
	list, err := m.moves().Namespace(mv.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("list the VolumeMoves of namespace %s: %w", mv.Namespace, err)
	}
	for i := range list.Items {
		other, err := FromUnstructured(&list.Items[i])
		if err != nil || other.UID == mv.UID || other.Status.Phase.Finished() || other.Status.Phase == "" || other.Status.Phase == PhasePending {
			continue
		}
		if other.Spec.Claim == mv.Spec.Claim {
			return fmt.Sprintf("Waiting for VolumeMove %s, which moves the same claim", other.Name), nil
		}
		for _, o := range owners {
			if slices.ContainsFunc(other.Status.Owners, func(x Owner) bool { return x.Kind == o.Kind && x.Name == o.Name }) {
				return fmt.Sprintf("Waiting for VolumeMove %s, which stops %s too", other.Name, o), nil
			}
		}
	}
	return "", nil
}
