package mover

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/rest"
)

// request is what the fake API server received.
type request struct {
	method, path, contentType string
	body                      []byte
}

// TestRESTCluster: NewCluster's calls reach the API paths of their groups, with
// the bodies the API server decodes, and read its JSON answers.
func TestRESTCluster(t *testing.T) {
	var mu sync.Mutex
	var got []request
	answers := map[string]string{
		"GET /apis/apps/v1/namespaces/team-a/statefulsets/web/scale": `{"apiVersion":"autoscaling/v1","kind":"Scale","metadata":{"name":"web","namespace":"team-a"},"spec":{"replicas":3}}`,
		"PUT /apis/apps/v1/namespaces/team-a/deployments/api/scale":  `{"apiVersion":"autoscaling/v1","kind":"Scale","metadata":{"name":"api"},"spec":{"replicas":0}}`,
		"GET /api/v1/namespaces/team-a/pods":                         `{"apiVersion":"v1","kind":"PodList","items":[{"metadata":{"name":"web-0"}}]}`,
		"GET /apis/storage.k8s.io/v1/csinodes/node-b":                `{"apiVersion":"storage.k8s.io/v1","kind":"CSINode","metadata":{"name":"node-b"},"spec":{"drivers":[{"name":"berth.csi.io","nodeID":"node-b"}]}}`,
		"PATCH /api/v1/persistentvolumes/pv-1":                       `{"apiVersion":"v1","kind":"PersistentVolume","metadata":{"name":"pv-1"}}`,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, request{r.Method, r.URL.Path, r.Header.Get("Content-Type"), body})
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		a, ok := answers[r.Method+" "+r.URL.Path]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			a = `{"apiVersion":"v1","kind":"Status","status":"Failure","reason":"NotFound","code":404}`
		}
		_, _ = io.WriteString(w, a)
	}))
	defer srv.Close()
	c, err := NewCluster(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	s, err := c.GetScale(ctx, "team-a", "StatefulSet", "web")
	if err != nil || s.Spec.Replicas != 3 {
		t.Errorf("GetScale: %+v, %v", s, err)
	}
	err = c.UpdateScale(ctx, "team-a", "Deployment", &autoscalingv1.Scale{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "team-a"}})
	if err != nil {
		t.Errorf("UpdateScale: %v", err)
	}
	pods, err := c.ListPods(ctx, "team-a")
	if err != nil || len(pods) != 1 || pods[0].Name != "web-0" {
		t.Errorf("ListPods: %+v, %v", pods, err)
	}
	n, err := c.GetCSINode(ctx, "node-b")
	if err != nil || len(n.Spec.Drivers) != 1 {
		t.Errorf("GetCSINode: %+v, %v", n, err)
	}
	if err := c.PatchPV(ctx, "pv-1", []byte(`{"spec":{"persistentVolumeReclaimPolicy":"Retain"}}`)); err != nil {
		t.Errorf("PatchPV: %v", err)
	}
	if err := c.DeleteClaim(ctx, "team-a", "gone", "uid-1"); err != nil {
		t.Errorf("DeleteClaim of a claim not found: %v, want nil", err)
	}
	if _, err := c.GetClaim(ctx, "team-a", "gone"); err == nil {
		t.Errorf("GetClaim of a claim not found: no error")
	}

	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{autoscalingv1.AddToScheme, metav1.AddMetaToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	metav1.AddToGroupVersion(scheme, corev1.SchemeGroupVersion)
	pb := protobuf.NewSerializer(scheme, scheme)
	checked := 0
	for _, r := range got {
		switch r.method + " " + r.path {
		case "PUT /apis/apps/v1/namespaces/team-a/deployments/api/scale":
			obj, _, err := pb.Decode(r.body, nil, nil)
			if sc, ok := obj.(*autoscalingv1.Scale); err != nil || !ok || sc.Name != "api" {
				t.Errorf("UpdateScale sent %T %v (%s)", obj, err, r.contentType)
			}
		case "PATCH /api/v1/persistentvolumes/pv-1":
			if r.contentType != "application/merge-patch+json" || !strings.Contains(string(r.body), "Retain") {
				t.Errorf("PatchPV sent %s %s", r.contentType, r.body)
			}
		case "DELETE /api/v1/namespaces/team-a/persistentvolumeclaims/gone":
			obj, _, err := pb.Decode(r.body, nil, &metav1.DeleteOptions{})
			if o, ok := obj.(*metav1.DeleteOptions); err != nil || !ok || o.Preconditions == nil || *o.Preconditions.UID != "uid-1" {
				t.Errorf("DeleteClaim sent %T %+v %v", obj, obj, err)
			}
		default:
			continue
		}
		checked++
	}
	if checked != 3 {
		t.Errorf("%d of the 3 writes reached the server: %+v", checked, got)
	}
}
