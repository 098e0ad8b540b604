package grouplabel

import (
	"context"

	"github.com/berth-csi/berth/pkg/corev1rest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// eventClient creates core/v1 Events with a REST client that knows those types
// alone (corev1rest), as the pv-lister's PersistentVolume client does:
// client-go's clientset would triple the driver binary.
type eventClient struct {
	rest      *rest.RESTClient
	namespace string
}

// NewEventClients returns the event client of each namespace, through the API
// server that cfg reaches.
func NewEventClients(cfg *rest.Config) (func(namespace string) EventCreator, error) {
	rc, _, err := corev1rest.New(cfg)
	if err != nil {
		return nil, err
	}
	return func(ns string) EventCreator { return &eventClient{rest: rc, namespace: ns} }, nil
}

// Create implements EventCreator.
func (c *eventClient) Create(ctx context.Context, ev *corev1.Event, _ metav1.CreateOptions) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := c.rest.Post().Namespace(c.namespace).Resource("events").Body(ev).Do(ctx).Into(out)
	return out, err
}
