package grouplabel

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/rest"
)

// TestEventClient: the labeller's event client posts the event in protobuf to
// /api/v1/namespaces/<namespace>/events, and reads a refusal (AlreadyExists for a
// refusal told before).
func TestEventClient(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	pb := protobuf.NewSerializer(scheme, scheme)
	var mu sync.Mutex
	var got []*corev1.Event
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/namespaces/app/events" || r.Header.Get("Content-Type") != runtime.ContentTypeProtobuf {
			t.Errorf("%s %s with Content-Type %q", r.Method, r.URL, r.Header.Get("Content-Type"))
		}
		body, _ := io.ReadAll(r.Body)
		obj, _, err := pb.Decode(body, nil, nil)
		if err != nil {
			t.Errorf("decode: %v", err)
			return
		}
		ev := obj.(*corev1.Event)
		if len(got) > 0 {
			w.Header().Set("Content-Type", runtime.ContentTypeJSON)
			w.WriteHeader(http.StatusConflict)
			_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"AlreadyExists","code":409,"message":"exists"}`))
			return
		}
		got = append(got, ev)
		ev.TypeMeta = metav1.TypeMeta{Kind: "Event", APIVersion: "v1"}
		var buf bytes.Buffer
		if err := pb.Encode(ev, &buf); err != nil {
			t.Error(err)
		}
		w.Header().Set("Content-Type", runtime.ContentTypeProtobuf)
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(buf.Bytes())
	}))
	defer srv.Close()
	events, err := NewEventClients(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	ev := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "c1.berth-across-nodes", Namespace: "app"}, Reason: RefusedReason}
	out, err := events("app").Create(context.Background(), ev, metav1.CreateOptions{})
	if err != nil || out.Name != ev.Name || out.Reason != RefusedReason {
		t.Fatalf("Create: %+v, %v", out, err)
	}
	if _, err := events("app").Create(context.Background(), ev, metav1.CreateOptions{}); !apierrors.IsAlreadyExists(err) {
		t.Errorf("second Create: %v, want AlreadyExists", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0].Name != ev.Name || got[0].Reason != RefusedReason {
		t.Errorf("server got %+v", got)
	}
}
