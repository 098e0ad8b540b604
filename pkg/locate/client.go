package locate

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/berth-csi/berth/pkg/corev1rest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
)

// ContentGroupVersion is the VolumeSnapshotContents' API (external-snapshotter v8).
var ContentGroupVersion = schema.GroupVersion{Group: "snapshot.storage.k8s.io", Version: "v1"}

// Content is what the locator reads of a VolumeSnapshotContent: plain JSON of the
// fields it needs, not external-snapshotter's client module, which the driver binary
// would carry for these few fields.
type Content struct {
	Metadata struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels,omitempty"`
	} `json:"metadata"`
	Spec struct {
		Driver string `json:"driver"`
		// Source holds one of the two: the volume of a dynamic snapshot, the
		// snapshot's handle in a pre-provisioned content.
		Source struct {
			VolumeHandle   string `json:"volumeHandle,omitempty"`
			SnapshotHandle string `json:"snapshotHandle,omitempty"`
		} `json:"source"`
	} `json:"spec"`
	Status struct {
		SnapshotHandle string `json:"snapshotHandle,omitempty"`
	} `json:"status"`
}

// ContentList is a page of VolumeSnapshotContents.
type ContentList struct {
	Metadata struct {
		Continue string `json:"continue,omitempty"`
	} `json:"metadata"`
	Items []Content `json:"items"`
}

// contentClient lists VolumeSnapshotContents in JSON (a custom resource has no
// protobuf) with a REST client that knows no type of theirs.
type contentClient struct {
	rest  *rest.RESTClient
	codec runtime.ParameterCodec
}

// NewContentClient returns a ContentLister through the API server that cfg reaches.
func NewContentClient(cfg *rest.Config) (ContentLister, error) {
	scheme := runtime.NewScheme()
	// The list options' query parameters, and the API's Status in its refusals.
	metav1.AddToGroupVersion(scheme, ContentGroupVersion)
	c := rest.CopyConfig(cfg)
	c.APIPath = "/apis"
	c.GroupVersion = &ContentGroupVersion
	c.ContentType = runtime.ContentTypeJSON
	c.AcceptContentTypes = runtime.ContentTypeJSON
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	return &contentClient{rest: rc, codec: runtime.NewParameterCodec(scheme)}, nil
}

// List implements ContentLister.
func (c *contentClient) List(ctx context.Context, opts metav1.ListOptions) (*ContentList, error) {
	raw, err := c.rest.Get().Resource("volumesnapshotcontents").VersionedParams(&opts, c.codec).DoRaw(ctx)
	if err != nil {
		return nil, err
	}
	out := &ContentList{}
	if err := json.Unmarshal(raw, out); err != nil {
		return nil, fmt.Errorf("decode VolumeSnapshotContents: %w", err)
	}
	return out, nil
}

// nodeClient gets Nodes with the core/v1 REST client (corev1rest), in protobuf.
type nodeClient struct {
	rest *rest.RESTClient
}

// NewNodeClient returns a NodeGetter through the API server that cfg reaches.
func NewNodeClient(cfg *rest.Config) (NodeGetter, error) {
	rc, _, err := corev1rest.New(cfg)
	if err != nil {
		return nil, err
	}
	return &nodeClient{rest: rc}, nil
}

// Get implements NodeGetter.
func (c *nodeClient) Get(ctx context.Context, name string, _ metav1.GetOptions) (*corev1.Node, error) {
	out := &corev1.Node{}
	err := c.rest.Get().Resource("nodes").Name(name).Do(ctx).Into(out)
	return out, err
}
