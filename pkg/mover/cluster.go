package mover

import (
	"context"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Cluster is what the mover reads and writes besides the VolumeMoves: narrower
// than client-go's clientset, whose typed clients register every API group in the
// binary (18 MB more in the stripped driver binary). NewCluster reaches the API
// server; the tests put a fake clientset behind it.
type Cluster interface {
	GetClaim(ctx context.Context, ns, name string) (*corev1.PersistentVolumeClaim, error)
	CreateClaim(ctx context.Context, pvc *corev1.PersistentVolumeClaim) error
	// DeleteClaim deletes the claim if its UID is uid; gone already is no error.
	DeleteClaim(ctx context.Context, ns, name string, uid types.UID) error
	GetPV(ctx context.Context, name string) (*corev1.PersistentVolume, error)
	CreatePV(ctx context.Context, pv *corev1.PersistentVolume) error
	// DeletePV deletes the PV if its UID is uid; gone already is no error.
	DeletePV(ctx context.Context, name string, uid types.UID) error
	// PatchPV applies a JSON merge patch.
	PatchPV(ctx context.Context, name string, patch []byte) error
	ListPods(ctx context.Context, ns string) ([]corev1.Pod, error)
	GetPod(ctx context.Context, ns, name string) (*corev1.Pod, error)
	CreatePod(ctx context.Context, p *corev1.Pod) error
	// DeletePod deletes the pod if its UID is uid; gone already is no error.
	DeletePod(ctx context.Context, ns, name string, uid types.UID) error
	GetNode(ctx context.Context, name string) (*corev1.Node, error)
	GetCSINode(ctx context.Context, name string) (*storagev1.CSINode, error)
	GetStatefulSet(ctx context.Context, ns, name string) (*appsv1.StatefulSet, error)
	GetReplicaSet(ctx context.Context, ns, name string) (*appsv1.ReplicaSet, error)
	GetDeployment(ctx context.Context, ns, name string) (*appsv1.Deployment, error)
	// GetScale and UpdateScale use the scale subresource of a StatefulSet or a
	// Deployment (kind).
	GetScale(ctx context.Context, ns, kind, name string) (*autoscalingv1.Scale, error)
	UpdateScale(ctx context.Context, ns, kind string, s *autoscalingv1.Scale) error
	CreateEvent(ctx context.Context, ev *corev1.Event) error
}
