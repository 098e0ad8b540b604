package orphans_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/berth-csi/berth/pkg/orphans"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/rest"
)

// TestPVClient: the pv-lister's client asks the API server for
// /api/v1/persistentvolumes page by page in protobuf, and reads its answers and its
// refusals.
func TestPVClient(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	pb := protobuf.NewSerializer(scheme, scheme)
	var mu sync.Mutex // the handler's goroutine and the test's
	var queries []string
	refuse := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.URL.Path != "/api/v1/persistentvolumes" || !strings.HasPrefix(r.Header.Get("Accept"), runtime.ContentTypeProtobuf) {
			t.Errorf("request %s with Accept %q", r.URL, r.Header.Get("Accept"))
		}
		queries = append(queries, r.URL.RawQuery)
		if refuse {
			w.Header().Set("Content-Type", runtime.ContentTypeJSON)
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403,"message":"persistentvolumes is forbidden"}`))
			return
		}
		list := &corev1.PersistentVolumeList{TypeMeta: metav1.TypeMeta{Kind: "PersistentVolumeList", APIVersion: "v1"},
			Items: []corev1.PersistentVolume{*pv("pv-1", driver, "b1-local-1", corev1.VolumeBound)}}
		if r.URL.Query().Get("continue") == "" {
			list.Continue = "next"
			list.Items[0] = *pv("pv-0", driver, "b1-local-0", corev1.VolumeBound)
		}
		var buf bytes.Buffer
		if err := pb.Encode(list, &buf); err != nil {
			t.Error(err)
		}
		w.Header().Set("Content-Type", runtime.ContentTypeProtobuf)
		_, _ = w.Write(buf.Bytes())
	}))
	defer srv.Close()
	pvs, err := orphans.NewPVClient(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	h, err := orphans.ListHandles(context.Background(), pvs, driver, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 2 || !h.Has("b1-local-0") || !h.Has("b1-local-1") {
		t.Errorf("handles %v, want both pages'", h)
	}
	mu.Lock()
	if len(queries) != 2 || queries[0] != "limit=1" || queries[1] != "continue=next&limit=1" {
		t.Errorf("queries %q, want two pages of 1", queries)
	}
	refuse = true
	mu.Unlock()
	if _, err := orphans.ListHandles(context.Background(), pvs, driver, 1); !apierrors.IsForbidden(err) {
		t.Errorf("refused listing: %v, want Forbidden", err)
	}
}
