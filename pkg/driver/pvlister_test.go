package driver_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/driver"
	"github.com/berth-csi/berth/pkg/healthz"
	"github.com/berth-csi/berth/pkg/locate"
	"github.com/berth-csi/berth/pkg/orphans"
	"github.com/berth-csi/berth/pkg/storage"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// TestPVListerServesBoth: the pv-lister's one socket answers the orphan scan's
// listing and the locations, each from the API server (here a fake serving one
// PersistentVolume on node-a, a content of a snapshot of it without a label, and
// node-a).
func TestPVListerServesBoth(t *testing.T) {
	vol := storage.VolumeID("local", "pvc-a")
	snap := storage.SnapshotID("local", "snapshot-a")
	pv := corev1.PersistentVolume{
		TypeMeta:   metav1.TypeMeta{Kind: "PersistentVolume", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Name: "pv-a"},
		Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: "berth.csi.io", VolumeHandle: vol}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: storage.TopologyKey, Operator: corev1.NodeSelectorOpIn, Values: []string{"node-a"}}},
			}}}},
		},
	}
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body any
		switch r.URL.Path {
		case "/api/v1/persistentvolumes":
			body = corev1.PersistentVolumeList{TypeMeta: metav1.TypeMeta{Kind: "PersistentVolumeList", APIVersion: "v1"}, Items: []corev1.PersistentVolume{pv}}
		case "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents":
			body = map[string]any{"kind": "VolumeSnapshotContentList", "apiVersion": "snapshot.storage.k8s.io/v1", "items": []any{map[string]any{
				"metadata": map[string]any{"name": "content-a"},
				"spec":     map[string]any{"driver": "berth.csi.io", "source": map[string]any{"volumeHandle": vol}},
				"status":   map[string]any{"snapshotHandle": snap},
			}}}
		case "/api/v1/nodes/node-a":
			body = corev1.Node{TypeMeta: metav1.TypeMeta{Kind: "Node", APIVersion: "v1"}, ObjectMeta: metav1.ObjectMeta{Name: "node-a"},
				Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.0.0.1"}}}}
		default:
			t.Errorf("unexpected request %s", r.URL)
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(body)
	}))
	defer api.Close()

	ctx, cancel := context.WithCancel(context.Background())
	mux, err := driver.PVListerMux(ctx, &rest.Config{Host: api.URL}, "berth.csi.io", 500)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(testutil.ShortTempDir(t), "pv-lister.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- healthz.ServeHTTP(ctx, lis, mux, 0) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	h, err := orphans.NewSocketLister(sock).VolumeHandles(context.Background())
	if err != nil || len(h) != 1 || !h.Has(vol) {
		t.Errorf("volume handles: %v, %v; want %s", h, err, vol)
	}
	want := locate.Where{Node: "node-a", Address: "10.0.0.1"}
	for _, id := range []string{vol, snap} {
		if got, err := locate.NewSocketLocator(sock).Locate(context.Background(), id); err != nil || got != want {
			t.Errorf("Locate %s: %+v, %v; want %+v", id, got, err, want)
		}
	}
}
