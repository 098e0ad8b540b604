package kubectlberth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/pkg/metrics"
	"github.com/berth-csi/berth/pkg/storage"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// TestParseRealScrape: what the driver's own collector serves (pkg/metrics on a real
// engine) parses into the facts the commands read, names and labels alike.
func TestParseRealScrape(t *testing.T) {
	e := testengine.Start(t, storage.Config{Pools: []storage.PoolConfig{{Name: "local", Path: filepath.Join(t.TempDir(), "local"), Kind: storage.KindDir}}})
	ctx := context.Background()
	claimed, err := e.DefaultPool().Create(ctx, storage.CreateRequest{Name: "pvc-1", RequiredBytes: 8 << 20, AccessType: storage.AccessMount,
		Claim: &storage.Claim{Namespace: "team-a", Name: "data"}})
	if err != nil {
		t.Fatal(err)
	}
	inline, err := e.DefaultPool().Create(ctx, storage.CreateRequest{Name: storage.EphemeralName("csi-1"), RequiredBytes: 1 << 20,
		AccessType: storage.AccessMount, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	metrics.New(e, "node-1").Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	s, err := ParseMetrics(rec.Body.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Pools) != 1 {
		t.Fatalf("pools %+v, want one", s.Pools)
	}
	p := s.Pools[0]
	if p.Node != "node-1" || p.Pool != "local" || p.Kind != "dir" || !p.Served || p.Volumes != 2 || p.AllocatedBytes != 9<<20 ||
		p.CapacityBytes == nil || p.UsedBytes == nil || p.FreeBytes == nil || *p.CapacityBytes <= 0 {
		t.Errorf("pool facts %+v", p)
	}
	v := s.Volumes[claimed.ID]
	if v.Pool != "local" || v.Namespace != "team-a" || v.Claim != "data" || v.CapacityBytes != 8<<20 || !v.Healthy || v.Ephemeral {
		t.Errorf("claimed volume facts %+v", v)
	}
	if !s.Volumes[inline.ID].Ephemeral {
		t.Errorf("inline volume facts %+v, want ephemeral", s.Volumes[inline.ID])
	}
}

// TestScrapeThroughAPIServer: a real clientset reads a pod's metrics at
// /api/v1/namespaces/<ns>/pods/<pod>:<port>/proxy/metrics, the path the pods/proxy
// RBAC rule covers.
func TestScrapeThroughAPIServer(t *testing.T) {
	pod := nodePod("berth-node-a", "node-a", corev1.PodRunning)
	text := newExposition().pool(healthyPool("node-a")).String()
	var paths []string
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths = append(paths, r.Method+" "+r.URL.Path)
		switch r.URL.Path {
		case "/api/v1/namespaces/kube-system/pods/berth-node-a":
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"kind":"Pod","apiVersion":"v1","metadata":{"name":"berth-node-a","namespace":"kube-system"},` +
				`"spec":{"nodeName":"node-a","containers":[{"name":"berth","ports":[{"name":"metrics","containerPort":9811}]}]}}`))
		case "/api/v1/namespaces/kube-system/pods/berth-node-a:9811/proxy/metrics":
			_, _ = w.Write([]byte(text))
		default:
			http.NotFound(w, r)
		}
	}))
	defer api.Close()
	kube, err := kubernetes.NewForConfig(&rest.Config{Host: api.URL})
	if err != nil {
		t.Fatal(err)
	}
	sources := []*Source{sourceOf(pod, "node")}
	scrapeAll(context.Background(), kube, sources)
	if sources[0].Err != nil || sources[0].Scrape == nil || len(sources[0].Scrape.Pools) != 1 {
		t.Fatalf("source %+v, err %v; requests %q", sources[0], sources[0].Err, paths)
	}
}

// TestSharedConstants: the plugin's copies of the engine's ID format and topology key
// (kept apart so the plugin builds for any OS) agree with the engine.
func TestSharedConstants(t *testing.T) {
	if topologyKey != storage.TopologyKey {
		t.Errorf("topologyKey %q, storage.TopologyKey %q", topologyKey, storage.TopologyKey)
	}
	for _, pool := range []string{"default", "fast-nvme", "a"} {
		if got := poolOf(storage.VolumeID(pool, "pvc-1")); got != pool {
			t.Errorf("poolOf(VolumeID(%q)) = %q", pool, got)
		}
	}
	for _, id := range []string{"adopted-srv", "b1-x", "b1--0123", "pvc-1"} {
		if got := poolOf(id); got != "" {
			t.Errorf("poolOf(%q) = %q, want none", id, got)
		}
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1 KiB", 1536: "1.5 KiB", 10 * mib: "10 MiB",
		gib + gib/5: "1.2 GiB", 1 << 40: "1 TiB", -2048: "-2 KiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestProgressBar(t *testing.T) {
	for _, tc := range []struct {
		done, total int64
		want        string
	}{
		{0, 100, "[----------] 0%"}, {50, 100, "[#####-----] 50%"}, {100, 100, "[##########] 100%"},
		{150, 100, "[##########] 100%"}, {5, 0, "[??????????]"},
	} {
		if got := progressBar(tc.done, tc.total, 10); got != tc.want {
			t.Errorf("progressBar(%d, %d) = %q, want %q", tc.done, tc.total, got, tc.want)
		}
	}
}
