package orphans

import (
	"context"

	"github.com/berth-csi/berth/pkg/corev1rest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
)

// pvClient lists PersistentVolumes with a REST client that knows the core/v1 types
// alone. The pv-lister is part of the driver binary: with client-go's clientset
// that binary would grow from 15.7 to 51.2 MB (stripped, as the image builds it;
// its typed core/v1 client alone registers every API group too), with this one to
// 24.2 MB.
type pvClient struct {
	rest  *rest.RESTClient
	codec runtime.ParameterCodec
}

// NewPVClient returns a PVLister through the API server that cfg reaches, asking
// for protobuf (about 1.6 KB per PersistentVolume, against 2.2 KB in JSON).
func NewPVClient(cfg *rest.Config) (PVLister, error) {
	rc, codec, err := corev1rest.New(cfg)
	if err != nil {
		return nil, err
	}
	return &pvClient{rest: rc, codec: codec}, nil
}

// List implements PVLister.
func (c *pvClient) List(ctx context.Context, opts metav1.ListOptions) (*corev1.PersistentVolumeList, error) {
	out := &corev1.PersistentVolumeList{}
	err := c.rest.Get().Resource("persistentvolumes").VersionedParams(&opts, c.codec).Do(ctx).Into(out)
	return out, err
}
