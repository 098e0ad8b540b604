package mover

import (
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Helpers on API objects that kubectl berth (recover, move, evacuate) shares.

const (
	// TopologyKey is the node segment of node-local volumes (storage.TopologyKey;
	// pkg/storage is not imported so that kubectl berth builds for any OS).
	TopologyKey = "topology.berth.csi.io/node"
	// AnnSelectedNode is where the per-node external-provisioner provisions a claim.
	AnnSelectedNode = "volume.kubernetes.io/selected-node"
	// AnnResyncFrom, in a PV's CSI volumeAttributes, makes the node plugin copy what
	// changed in that source volume since the clone, at the volume's NodeStageVolume.
	AnnResyncFrom = "berth.csi.io/resync-from"
	// AnnMove marks the PVs and claims of a move: <namespace>/<move name>. On a
	// temporary claim it is also the label LabelMove (the move's name).
	AnnMove   = "berth.csi.io/move"
	LabelMove = AnnMove
	// annProvisionedBy names the provisioner that deletes a PV when its claim goes.
	annProvisionedBy = "pv.kubernetes.io/provisioned-by"
)

// PVNode is the node of a node-local PV (its topology segment), "" for a shared
// pool's volume, which every node reaches.
func PVNode(pv *corev1.PersistentVolume) string {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return ""
	}
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, e := range term.MatchExpressions {
			if e.Key == TopologyKey && e.Operator == corev1.NodeSelectorOpIn && len(e.Values) > 0 {
				return e.Values[0]
			}
		}
	}
	return ""
}

// UsesClaim: one of the pod's volumes is the claim (in the pod's namespace).
func UsesClaim(p *corev1.Pod, claim string) bool {
	for _, v := range p.Spec.Volumes {
		if v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == claim {
			return true
		}
	}
	return false
}

// Holds: the pod may still have the claim's volume mounted (not finished).
func Holds(p *corev1.Pod, claim string) bool {
	return UsesClaim(p, claim) && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

// NodeReady: the node's Ready condition is True.
func NodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// BindingAnnotation: an annotation the PV controller or a provisioner sets on a
// claim, which a claim made again must not carry.
func BindingAnnotation(k string) bool {
	return strings.HasPrefix(k, "pv.kubernetes.io/") || strings.HasPrefix(k, "volume.beta.kubernetes.io/") ||
		k == AnnSelectedNode || k == "volume.kubernetes.io/storage-provisioner"
}

// RecordClaim keeps the claim's labels, its annotations but the binding ones and
// those drop names, and the spec a new provisioning or binding needs.
func RecordClaim(pvc *corev1.PersistentVolumeClaim, drop ...string) *ClaimRecord {
	r := &ClaimRecord{Labels: pvc.Labels}
	for k, v := range pvc.Annotations {
		if BindingAnnotation(k) || slices.Contains(drop, k) {
			continue
		}
		if r.Annotations == nil {
			r.Annotations = map[string]string{}
		}
		r.Annotations[k] = v
	}
	s := pvc.Spec
	r.Spec = corev1.PersistentVolumeClaimSpec{StorageClassName: s.StorageClassName, AccessModes: s.AccessModes,
		VolumeMode: s.VolumeMode, Resources: s.Resources, VolumeAttributesClassName: s.VolumeAttributesClassName}
	return r
}
