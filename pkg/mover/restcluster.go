package mover

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
)

// restCluster is Cluster over one REST client per API group (core, apps,
// storage.k8s.io), whose scheme knows the types of the mover's groups alone.
type restCluster struct {
	core, apps, storage *rest.RESTClient
}

// NewCluster is the Cluster that cfg's API server is.
func NewCluster(cfg *rest.Config) (Cluster, error) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, storagev1.AddToScheme, autoscalingv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, err
		}
	}
	for _, gv := range []schema.GroupVersion{corev1.SchemeGroupVersion, appsv1.SchemeGroupVersion, storagev1.SchemeGroupVersion} {
		metav1.AddToGroupVersion(scheme, gv)
	}
	client := func(path string, gv schema.GroupVersion) (*rest.RESTClient, error) {
		c := rest.CopyConfig(cfg)
		c.APIPath, c.GroupVersion = path, &gv
		c.ContentType = runtime.ContentTypeProtobuf
		c.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
		c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
		return rest.RESTClientFor(c)
	}
	var rc restCluster
	var err error
	if rc.core, err = client("/api", corev1.SchemeGroupVersion); err != nil {
		return nil, err
	}
	if rc.apps, err = client("/apis", appsv1.SchemeGroupVersion); err != nil {
		return nil, err
	}
	if rc.storage, err = client("/apis", storagev1.SchemeGroupVersion); err != nil {
		return nil, err
	}
	return &rc, nil
}

func get[T runtime.Object](ctx context.Context, c *rest.RESTClient, ns, resource, name, sub string, into T) (T, error) {
	r := c.Get().Resource(resource).Name(name)
	if ns != "" {
		r = r.Namespace(ns)
	}
	if sub != "" {
		r = r.SubResource(sub)
	}
	err := r.Do(ctx).Into(into)
	return into, err
}

func deleteIf(ctx context.Context, c *rest.RESTClient, ns, resource, name string, uid types.UID) error {
	opts := &metav1.DeleteOptions{}
	if uid != "" {
		opts.Preconditions = &metav1.Preconditions{UID: &uid}
	}
	r := c.Delete().Resource(resource).Name(name).Body(opts)
	if ns != "" {
		r = r.Namespace(ns)
	}
	if err := r.Do(ctx).Error(); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}

func (c *restCluster) GetClaim(ctx context.Context, ns, name string) (*corev1.PersistentVolumeClaim, error) {
	return get(ctx, c.core, ns, "persistentvolumeclaims", name, "", &corev1.PersistentVolumeClaim{})
}

func (c *restCluster) CreateClaim(ctx context.Context, pvc *corev1.PersistentVolumeClaim) error {
	return c.core.Post().Namespace(pvc.Namespace).Resource("persistentvolumeclaims").Body(pvc).Do(ctx).Error()
}

func (c *restCluster) DeleteClaim(ctx context.Context, ns, name string, uid types.UID) error {
	return deleteIf(ctx, c.core, ns, "persistentvolumeclaims", name, uid)
}

func (c *restCluster) GetPV(ctx context.Context, name string) (*corev1.PersistentVolume, error) {
	return get(ctx, c.core, "", "persistentvolumes", name, "", &corev1.PersistentVolume{})
}

func (c *restCluster) CreatePV(ctx context.Context, pv *corev1.PersistentVolume) error {
	return c.core.Post().Resource("persistentvolumes").Body(pv).Do(ctx).Error()
}

func (c *restCluster) DeletePV(ctx context.Context, name string, uid types.UID) error {
	return deleteIf(ctx, c.core, "", "persistentvolumes", name, uid)
}

func (c *restCluster) PatchPV(ctx context.Context, name string, patch []byte) error {
	return c.core.Patch(types.MergePatchType).Resource("persistentvolumes").Name(name).Body(patch).Do(ctx).Error()
}

func (c *restCluster) ListPods(ctx context.Context, ns string) ([]corev1.Pod, error) {
	list := &corev1.PodList{}
	err := c.core.Get().Namespace(ns).Resource("pods").Do(ctx).Into(list)
	return list.Items, err
}

func (c *restCluster) GetPod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	return get(ctx, c.core, ns, "pods", name, "", &corev1.Pod{})
}

func (c *restCluster) CreatePod(ctx context.Context, p *corev1.Pod) error {
	return c.core.Post().Namespace(p.Namespace).Resource("pods").Body(p).Do(ctx).Error()
}

func (c *restCluster) DeletePod(ctx context.Context, ns, name string, uid types.UID) error {
	return deleteIf(ctx, c.core, ns, "pods", name, uid)
}

func (c *restCluster) GetNode(ctx context.Context, name string) (*corev1.Node, error) {
	return get(ctx, c.core, "", "nodes", name, "", &corev1.Node{})
}

func (c *restCluster) GetCSINode(ctx context.Context, name string) (*storagev1.CSINode, error) {
	return get(ctx, c.storage, "", "csinodes", name, "", &storagev1.CSINode{})
}

func (c *restCluster) GetStatefulSet(ctx context.Context, ns, name string) (*appsv1.StatefulSet, error) {
	return get(ctx, c.apps, ns, "statefulsets", name, "", &appsv1.StatefulSet{})
}

func (c *restCluster) GetReplicaSet(ctx context.Context, ns, name string) (*appsv1.ReplicaSet, error) {
	return get(ctx, c.apps, ns, "replicasets", name, "", &appsv1.ReplicaSet{})
}

func (c *restCluster) GetDeployment(ctx context.Context, ns, name string) (*appsv1.Deployment, error) {
	return get(ctx, c.apps, ns, "deployments", name, "", &appsv1.Deployment{})
}

// scalable is the resource of a kind with a scale subresource.
func scalable(kind string) (string, error) {
	switch kind {
	case "StatefulSet":
		return "statefulsets", nil
	case "Deployment":
		return "deployments", nil
	}
	return "", fmt.Errorf("no scale subresource for kind %q", kind)
}

func (c *restCluster) GetScale(ctx context.Context, ns, kind, name string) (*autoscalingv1.Scale, error) {
	res, err := scalable(kind)
	if err != nil {
		return nil, err
	}
	return get(ctx, c.apps, ns, res, name, "scale", &autoscalingv1.Scale{})
}

func (c *restCluster) UpdateScale(ctx context.Context, ns, kind string, s *autoscalingv1.Scale) error {
	res, err := scalable(kind)
	if err != nil {
		return err
	}
	return c.apps.Put().Namespace(ns).Resource(res).Name(s.Name).SubResource("scale").Body(s).Do(ctx).Error()
}

func (c *restCluster) CreateEvent(ctx context.Context, ev *corev1.Event) error {
	return c.core.Post().Namespace(ev.Namespace).Resource("events").Body(ev).Do(ctx).Error()
}
