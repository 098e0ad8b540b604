package mover

import (
	"context"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// clientset is Cluster over client-go's clientset (a fake one in the tests).
type clientset struct{ kubernetes.Interface }

func (c clientset) GetClaim(ctx context.Context, ns, name string) (*corev1.PersistentVolumeClaim, error) {
	return c.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
}

func (c clientset) CreateClaim(ctx context.Context, pvc *corev1.PersistentVolumeClaim) error {
	_, err := c.CoreV1().PersistentVolumeClaims(pvc.Namespace).Create(ctx, pvc, metav1.CreateOptions{})
	return err
}

func (c clientset) DeleteClaim(ctx context.Context, ns, name string, uid types.UID) error {
	return ignoreNotFound(c.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, name, deleteOptions(uid)))
}

func (c clientset) GetPV(ctx context.Context, name string) (*corev1.PersistentVolume, error) {
	return c.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{})
}

func (c clientset) CreatePV(ctx context.Context, pv *corev1.PersistentVolume) error {
	_, err := c.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
	return err
}

func (c clientset) DeletePV(ctx context.Context, name string, uid types.UID) error {
	return ignoreNotFound(c.CoreV1().PersistentVolumes().Delete(ctx, name, deleteOptions(uid)))
}

func (c clientset) PatchPV(ctx context.Context, name string, patch []byte) error {
	_, err := c.CoreV1().PersistentVolumes().Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

func (c clientset) ListPods(ctx context.Context, ns string) ([]corev1.Pod, error) {
	list, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	return list.Items, nil
}

func (c clientset) GetPod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	return c.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
}

func (c clientset) CreatePod(ctx context.Context, p *corev1.Pod) error {
	_, err := c.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
	return err
}

func (c clientset) DeletePod(ctx context.Context, ns, name string, uid types.UID) error {
	return ignoreNotFound(c.CoreV1().Pods(ns).Delete(ctx, name, deleteOptions(uid)))
}

func (c clientset) GetNode(ctx context.Context, name string) (*corev1.Node, error) {
	return c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
}

func (c clientset) GetCSINode(ctx context.Context, name string) (*storagev1.CSINode, error) {
	return c.StorageV1().CSINodes().Get(ctx, name, metav1.GetOptions{})
}

func (c clientset) GetStatefulSet(ctx context.Context, ns, name string) (*appsv1.StatefulSet, error) {
	return c.AppsV1().StatefulSets(ns).Get(ctx, name, metav1.GetOptions{})
}

func (c clientset) GetReplicaSet(ctx context.Context, ns, name string) (*appsv1.ReplicaSet, error) {
	return c.AppsV1().ReplicaSets(ns).Get(ctx, name, metav1.GetOptions{})
}

func (c clientset) GetDeployment(ctx context.Context, ns, name string) (*appsv1.Deployment, error) {
	return c.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
}

func (c clientset) GetScale(ctx context.Context, ns, kind, name string) (*autoscalingv1.Scale, error) {
	if kind == "StatefulSet" {
		return c.AppsV1().StatefulSets(ns).GetScale(ctx, name, metav1.GetOptions{})
	}
	return c.AppsV1().Deployments(ns).GetScale(ctx, name, metav1.GetOptions{})
}

func (c clientset) UpdateScale(ctx context.Context, ns, kind string, s *autoscalingv1.Scale) error {
	var err error
	if kind == "StatefulSet" {
		_, err = c.AppsV1().StatefulSets(ns).UpdateScale(ctx, s.Name, s, metav1.UpdateOptions{})
	} else {
		_, err = c.AppsV1().Deployments(ns).UpdateScale(ctx, s.Name, s, metav1.UpdateOptions{})
	}
	return err
}

func (c clientset) CreateEvent(ctx context.Context, ev *corev1.Event) error {
	_, err := c.CoreV1().Events(ev.Namespace).Create(ctx, ev, metav1.CreateOptions{})
	return err
}

func deleteOptions(uid types.UID) metav1.DeleteOptions {
	if uid == "" {
		return metav1.DeleteOptions{}
	}
	return metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}
}

func ignoreNotFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}
