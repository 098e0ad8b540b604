package locate_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/berth-csi/berth/pkg/locate"
	"github.com/berth-csi/berth/pkg/orphans"
	"github.com/berth-csi/berth/pkg/storage"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

const driver = "berth.csi.io"

var (
	volA     = storage.VolumeID("local", "pvc-a")
	volB     = storage.VolumeID("local", "pvc-b")
	volS     = storage.VolumeID("gluster", "pvc-s")
	snapA    = storage.SnapshotID("local", "snapshot-a")
	snapPre  = storage.SnapshotID("local", "snapshot-pre")
	snapNone = storage.SnapshotID("local", "snapshot-none")
)

// pv is a PersistentVolume of drv for handle, with node (if any) in its affinity as
// the provisioner writes it from Berth's topology.
func pv(name, drv, handle, node string) corev1.PersistentVolume {
	p := corev1.PersistentVolume{
		TypeMeta:   metav1.TypeMeta{Kind: "PersistentVolume", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{PersistentVolumeSource: corev1.PersistentVolumeSource{
			CSI: &corev1.CSIPersistentVolumeSource{Driver: drv, VolumeHandle: handle}}},
		Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeBound},
	}
	if node != "" {
		p.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: storage.TopologyKey, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}},
		}}}}
	}
	return p
}

// vsc is a VolumeSnapshotContent as the API serves it: dynamic (source volume,
// status handle) when volume is set, else pre-provisioned (source snapshot
// handle); node, if any, in the managed-by label.
func vsc(name, drv, snap, volume, node string) map[string]any {
	meta := map[string]any{"name": name, "uid": "uid-" + name, "resourceVersion": "7"}
	if node != "" {
		meta["labels"] = map[string]any{"snapshot.storage.kubernetes.io/managed-by": node}
	}
	spec := map[string]any{"driver": drv, "deletionPolicy": "Delete",
		"volumeSnapshotRef": map[string]any{"namespace": "ns", "name": "snap-" + name}}
	status := map[string]any{"readyToUse": true, "restoreSize": 1 << 30, "creationTime": 1700000000000000000}
	if volume != "" {
		spec["source"] = map[string]any{"volumeHandle": volume}
		status["snapshotHandle"] = snap
	} else {
		spec["source"] = map[string]any{"snapshotHandle": snap}
	}
	return map[string]any{"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
		"metadata": meta, "spec": spec, "status": status}
}

// node is a Node with these addresses, by type.
func node(name string, addrs ...corev1.NodeAddress) *corev1.Node {
	return &corev1.Node{TypeMeta: metav1.TypeMeta{Kind: "Node", APIVersion: "v1"}, ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{Addresses: addrs}}
}

func internal(ip string) corev1.NodeAddress {
	return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip}
}

// fakeAPI serves, in JSON, the lists of PersistentVolumes and VolumeSnapshotContents
// page by page (limit, continue) and gets of Nodes, as the API server does, and
// records each request.
type fakeAPI struct {
	t        *testing.T
	pvs      []corev1.PersistentVolume
	contents []map[string]any
	nodes    map[string]*corev1.Node
	refuse   string // a path answered 403

	mu       sync.Mutex
	requests []string
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests = append(f.requests, r.URL.Path+"?"+r.URL.RawQuery)
	f.mu.Unlock()
	status := func(code int, reason metav1.StatusReason) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
			Status: metav1.StatusFailure, Reason: reason, Code: int32(code), Message: r.URL.Path + " " + string(reason)})
	}
	if r.Method != http.MethodGet {
		f.t.Errorf("%s %s", r.Method, r.URL)
	}
	if r.URL.Path == f.refuse {
		status(http.StatusForbidden, metav1.StatusReasonForbidden)
		return
	}
	// page is items[from:from+limit] and the continue token after it.
	page := func(n int) (from, to int, next string) {
		q := r.URL.Query()
		limit, err := strconv.Atoi(q.Get("limit"))
		if err != nil || limit <= 0 {
			f.t.Errorf("%s: no limit", r.URL)
			limit = n
		}
		if c := q.Get("continue"); c != "" {
			from, _ = strconv.Atoi(c)
		}
		to = min(from+limit, n)
		if to < n {
			next = strconv.Itoa(to)
		}
		return from, to, next
	}
	var body any
	switch path := r.URL.Path; {
	case path == "/api/v1/persistentvolumes":
		from, to, next := page(len(f.pvs))
		body = corev1.PersistentVolumeList{TypeMeta: metav1.TypeMeta{Kind: "PersistentVolumeList", APIVersion: "v1"},
			ListMeta: metav1.ListMeta{Continue: next, ResourceVersion: "9"}, Items: f.pvs[from:to]}
	case path == "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents":
		from, to, next := page(len(f.contents))
		items := f.contents[from:to]
		if items == nil {
			items = []map[string]any{}
		}
		body = map[string]any{"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContentList",
			"metadata": map[string]any{"continue": next, "resourceVersion": "9"}, "items": items}
	case strings.HasPrefix(path, "/api/v1/nodes/"):
		n, ok := f.nodes[strings.TrimPrefix(path, "/api/v1/nodes/")]
		if !ok {
			status(http.StatusNotFound, metav1.StatusReasonNotFound)
			return
		}
		body = n
	default:
		f.t.Errorf("unexpected request %s", r.URL)
		status(http.StatusNotFound, metav1.StatusReasonNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(body)
}

// locator is a KubeLocator with the clients the pv-lister uses, through api.
func locator(t *testing.T, api *fakeAPI, pageSize int64) locate.KubeLocator {
	t.Helper()
	api.t = t
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	cfg := &rest.Config{Host: srv.URL}
	pvs, err := orphans.NewPVClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	contents, err := locate.NewContentClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := locate.NewNodeClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return locate.KubeLocator{PVs: pvs, Contents: contents, Nodes: nodes, Driver: driver, PageSize: pageSize}
}

// cluster is a few nodes, the PersistentVolumes of their volumes and the contents
// of their snapshots, another driver's objects naming the same IDs among them.
func cluster() *fakeAPI {
	return &fakeAPI{
		pvs: []corev1.PersistentVolume{
			pv("pv-other", "other.csi.io", volA, "node-x"),
			pv("pv-a", driver, volA, "node-a"),
			pv("pv-b", driver, volB, "node-b"),
			pv("pv-shared", driver, volS, ""),
		},
		contents: []map[string]any{
			vsc("other", "other.csi.io", snapA, volB, "node-x"),
			vsc("content-a", driver, snapA, volB, "node-a"),
			vsc("content-pre", driver, snapPre, "", "node-b"),
		},
		nodes: map[string]*corev1.Node{
			"node-a": node("node-a", corev1.NodeAddress{Type: corev1.NodeHostName, Address: "node-a"},
				corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.1"}, internal("10.0.0.1"), internal("fd00::1")),
			"node-b": node("node-b", internal("fd00::b")),
			"node-x": node("node-x", internal("10.0.0.99")),
			"node-n": node("node-n", corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.9"}, internal("not-an-ip")),
		},
	}
}

func TestKubeLocator(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setup   func(*fakeAPI)
		id      string
		want    locate.Where
		wantErr error  // errors.Is; nil: any error when want is zero
		wantMsg string // in the error's text
	}{
		{name: "volume", id: volA, want: locate.Where{Node: "node-a", Address: "10.0.0.1"}},
		{name: "volume on an IPv6 node", id: volB, want: locate.Where{Node: "node-b", Address: "fd00::b"}},
		{name: "snapshot by its content's label", id: snapA, want: locate.Where{Node: "node-a", Address: "10.0.0.1"}},
		{name: "snapshot by its source volume's PersistentVolume", id: snapA, setup: func(f *fakeAPI) {
			f.contents[1] = vsc("content-a", driver, snapA, volB, "")
		}, want: locate.Where{Node: "node-b", Address: "fd00::b"}},
		{name: "pre-provisioned snapshot", id: snapPre, want: locate.Where{Node: "node-b", Address: "fd00::b"}},
		{name: "pre-provisioned content without a label beside the labelled dynamic one", id: snapPre, setup: func(f *fakeAPI) {
			f.contents = append([]map[string]any{vsc("imported", driver, snapPre, "", "")}, f.contents...)
		}, want: locate.Where{Node: "node-b", Address: "fd00::b"}},
		{name: "pre-provisioned snapshot without a label", id: snapPre, setup: func(f *fakeAPI) {
			f.contents[2] = vsc("content-pre", driver, snapPre, "", "")
		}, wantErr: locate.ErrNotFound, wantMsg: "content-pre has no label"},
		{name: "another driver's objects are ignored", id: snapA, setup: func(f *fakeAPI) {
			f.contents = f.contents[:1]
		}, wantErr: locate.ErrNotFound, wantMsg: "no VolumeSnapshotContent of berth.csi.io"},
		{name: "another driver's PersistentVolume is ignored", id: volA, setup: func(f *fakeAPI) {
			f.pvs = f.pvs[:1]
		}, wantErr: locate.ErrNotFound, wantMsg: "no PersistentVolume of berth.csi.io"},
		{name: "shared pool's volume", id: volS, wantErr: locate.ErrNotFound, wantMsg: "pv-shared names no node"},
		{name: "snapshot of a shared pool's volume", id: snapA, setup: func(f *fakeAPI) {
			f.contents[1] = vsc("content-a", driver, snapA, volS, "")
		}, wantErr: locate.ErrNotFound, wantMsg: "pv-shared names no node"},
		{name: "unknown snapshot", id: snapNone, wantErr: locate.ErrNotFound},
		{name: "node gone", id: volA, setup: func(f *fakeAPI) { delete(f.nodes, "node-a") },
			wantErr: locate.ErrNotFound, wantMsg: "node-a does not exist"},
		{name: "node without an InternalIP", id: volA, setup: func(f *fakeAPI) { f.pvs[1] = pv("pv-a", driver, volA, "node-n") },
			wantMsg: "node node-n has no InternalIP"},
		{name: "not a Berth ID", id: "pvc-123", wantErr: locate.ErrInvalidID},
		{name: "malformed snapshot ID", id: "s1-local-xyz", wantErr: locate.ErrInvalidID},
		{name: "PersistentVolumes refused", id: volA, setup: func(f *fakeAPI) { f.refuse = "/api/v1/persistentvolumes" },
			wantMsg: "list PersistentVolumes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := cluster()
			if tc.setup != nil {
				tc.setup(api)
			}
			got, err := locator(t, api, 0).Locate(context.Background(), tc.id)
			if tc.want != (locate.Where{}) {
				if err != nil || got != tc.want {
					t.Fatalf("Locate: %+v, %v; want %+v", got, err, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Locate: %+v, want an error", got)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("Locate: %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == nil && (errors.Is(err, locate.ErrNotFound) || errors.Is(err, locate.ErrInvalidID)) {
				t.Errorf("Locate: %v, want a failure, neither not found nor invalid", err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("Locate: %q, want it to say %q", err, tc.wantMsg)
			}
		})
	}
}

// TestKubeLocatorAPIErrors: the API's refusals reach the caller as its errors, so
// that RBAC shows in the pv-lister's answer.
func TestKubeLocatorAPIErrors(t *testing.T) {
	for _, path := range []string{"/api/v1/persistentvolumes", "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents", "/api/v1/nodes/node-a"} {
		api := cluster()
		api.refuse = path
		id := volA
		if strings.Contains(path, "snapshot") {
			id = snapA
		}
		if _, err := locator(t, api, 0).Locate(context.Background(), id); !apierrors.IsForbidden(err) || errors.Is(err, locate.ErrNotFound) {
			t.Errorf("%s refused: %v, want Forbidden", path, err)
		}
	}
}

// TestKubeLocatorPages: the lists go page by page, each once, and stop at what they
// look for; nothing is asked for an invalid ID.
func TestKubeLocatorPages(t *testing.T) {
	api := cluster()
	l := locator(t, api, 2)
	if got, err := l.Locate(context.Background(), volB); err != nil || got.Node != "node-b" {
		t.Fatalf("Locate %s: %+v, %v", volB, got, err)
	}
	want := []string{
		"/api/v1/persistentvolumes?limit=2",
		"/api/v1/persistentvolumes?continue=2&limit=2",
		"/api/v1/nodes/node-b?",
	}
	if strings.Join(api.requests, " ") != strings.Join(want, " ") {
		t.Errorf("requests %q, want %q", api.requests, want)
	}

	// A snapshot whose content has no label: the contents once, then the
	// PersistentVolumes once.
	api.contents = append(api.contents, vsc("content-late", driver, snapNone, volB, ""))
	api.requests = nil
	if got, err := l.Locate(context.Background(), snapNone); err != nil || got.Node != "node-b" {
		t.Fatalf("Locate %s: %+v, %v", snapNone, got, err)
	}
	want = []string{
		"/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents?limit=2",
		"/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents?continue=2&limit=2",
		"/api/v1/persistentvolumes?limit=2",
		"/api/v1/persistentvolumes?continue=2&limit=2",
		"/api/v1/nodes/node-b?",
	}
	if strings.Join(api.requests, " ") != strings.Join(want, " ") {
		t.Errorf("requests %q, want %q", api.requests, want)
	}

	api.requests = nil
	if _, err := l.Locate(context.Background(), "b1-../../etc"); !errors.Is(err, locate.ErrInvalidID) || len(api.requests) != 0 {
		t.Errorf("invalid ID: %v after requests %q", err, api.requests)
	}
}
