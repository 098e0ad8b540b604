package kubectlberth

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	clienttesting "k8s.io/client-go/testing"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

const (
	driverNS = "kube-system"
	// Volume IDs b1-<pool>-<32 hex digits>, as storage.VolumeID makes them.
	idData     = "b1-default-000000000000000000000000000000d1"
	idLogs     = "b1-default-000000000000000000000000000000b2"
	idGone     = "b1-default-000000000000000000000000000000a3"
	idOrphan   = "b1-default-000000000000000000000000000000e4"
	idInline   = "b1-default-000000000000000000000000000000f5"
	idFastData = "b1-fast-000000000000000000000000000000c6"
	idKept     = "b1-default-000000000000000000000000000000a7"
)

// world is a fake cluster: the API objects, each driver pod's successive metrics
// (the last one repeats), and the commands run in pods.
type world struct {
	kube    *fake.Clientset
	dyn     *dynfake.FakeDynamicClient
	exec    *fakeExec
	mu      sync.Mutex
	metrics map[string][]string // pod -> scrapes, in order
}

func newWorld(t *testing.T, objs ...runtime.Object) *world {
	t.Helper()
	w := &world{kube: fake.NewSimpleClientset(objs...), metrics: map[string][]string{}, exec: &fakeExec{}}
	w.dyn = dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{vscResource: "VolumeSnapshotContentList"})
	w.kube.PrependProxyReactor("pods", func(a clienttesting.Action) (bool, rest.ResponseWrapper, error) {
		pa := a.(clienttesting.ProxyGetAction)
		if pa.GetPath() != "metrics" || pa.GetScheme() != "" {
			return true, nil, fmt.Errorf("unexpected proxy %s %s", pa.GetScheme(), pa.GetPath())
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		seq := w.metrics[pa.GetName()+":"+pa.GetPort()]
		if len(seq) == 0 {
			return true, proxyResponse{err: fmt.Errorf("the server could not find the requested resource")}, nil
		}
		text := seq[0]
		if len(seq) > 1 {
			w.metrics[pa.GetName()+":"+pa.GetPort()] = seq[1:]
		}
		return true, proxyResponse{body: text}, nil
	})
	return w
}

// serve sets the successive scrapes of pod's metrics port.
func (w *world) serve(pod string, port int, scrapes ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.metrics[fmt.Sprintf("%s:%d", pod, port)] = scrapes
}

func (w *world) addVSC(t *testing.T, name, driver, handle string) {
	t.Helper()
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
		"metadata": map[string]any{"name": name},
		"spec":     map[string]any{"driver": driver, "source": map[string]any{"volumeHandle": handle}},
	}}
	if _, err := w.dyn.Resource(vscResource).Create(context.Background(), u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

type proxyResponse struct {
	body string
	err  error
}

func (r proxyResponse) DoRaw(context.Context) ([]byte, error) { return []byte(r.body), r.err }
func (r proxyResponse) Stream(context.Context) (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader(r.body)), r.err
}

// fakeExec records the commands and answers with code.
type fakeExec struct {
	calls  [][]string
	code   int
	out    string
	before func() // runs at each call (a PV created meanwhile...)
}

func (e *fakeExec) Exec(_ context.Context, ns, pod, container string, cmd []string) (string, int, error) {
	if e.before != nil {
		e.before()
	}
	e.calls = append(e.calls, append([]string{ns + "/" + pod, container}, cmd...))
	return e.out, e.code, nil
}

// run runs `kubectl berth args...` against the world; stdin is the terminal.
func (w *world) run(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	ns := "team-a" // the kubeconfig context's namespace
	o := &Options{
		Streams:    Streams{In: strings.NewReader(stdin), Out: &out, ErrOut: &errOut},
		NewClients: func() (*Clients, error) { return &Clients{Kube: w.kube, Dynamic: w.dyn, Exec: w.exec}, nil },
		Namespace:  func() (string, error) { return ns, nil },
	}
	cmd := newRoot(o)
	cmd.PersistentFlags().StringVarP(&ns, "namespace", "n", ns, "as clientcmd binds it")
	if len(args) > 0 && args[0] == "doctor" {
		args = append(append([]string{}, args...), "--interval=0s") // no pause between the two reads
	}
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// nodePod is a running node plugin pod of the chart on node, metrics on 9811.
func nodePod(name, node string, phase corev1.PodPhase) *corev1.Pod {
	return driverPod(name, node, "node", 9811, phase)
}

func driverPod(name, node, component string, port int32, phase corev1.PodPhase) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: driverNS, Labels: map[string]string{
			"app.kubernetes.io/name": "berth", "app.kubernetes.io/instance": "berth", componentLabel: component}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{
			{Name: "berth", Image: "ghcr.io/berth-csi/berth:test", Args: []string{"--mode=all", "--endpoint=unix:///csi/csi.sock"}},
			{Name: "csi-provisioner"},
		}},
		Status: corev1.PodStatus{Phase: phase},
	}
	if port != 0 {
		p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "metrics", ContainerPort: port}}
	}
	return p
}

// pv is a PersistentVolume of the driver bound to ns/claim (none when claim is "").
func pv(name, id, node, ns, claim, size string, phase corev1.PersistentVolumePhase) *corev1.PersistentVolume {
	p := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:               corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: "berth.csi.io", VolumeHandle: id}},
		},
		Status: corev1.PersistentVolumeStatus{Phase: phase},
	}
	if claim != "" {
		p.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: ns, Name: claim}
	}
	if node != "" {
		p.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: topologyKey, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}},
		}}}}
	}
	return p
}

// exposition renders pools, volumes and copies in the Prometheus text format, with
// the names and labels pkg/metrics uses (TestParseRealScrape checks those against
// the real collector).
type exposition struct {
	lines map[string][]string
	types map[string]string
}

func newExposition() *exposition {
	return &exposition{lines: map[string][]string{}, types: map[string]string{}}
}

func (e *exposition) add(name, typ string, v float64, kv ...string) {
	var ls []string
	for i := 0; i < len(kv); i += 2 {
		ls = append(ls, fmt.Sprintf("%s=%q", kv[i], kv[i+1]))
	}
	sort.Strings(ls)
	e.types[name] = typ
	e.lines[name] = append(e.lines[name], fmt.Sprintf("%s{%s} %v", name, strings.Join(ls, ","), v))
}

func (e *exposition) pool(p PoolFacts) *exposition {
	l := []string{"pool", p.Pool, "kind", p.Kind, "node", p.Node}
	g := func(name string, v int64, extra ...string) {
		e.add(name, "gauge", float64(v), append(append([]string{}, l...), extra...)...)
	}
	g("berth_pool_served", b2i(p.Served))
	for _, r := range []string{"MountFailed", "MountLost", "CheckFailed"} {
		g("berth_pool_unserved", b2i(p.Reason == r), "reason", r)
	}
	g("berth_pool_allocated_bytes", p.AllocatedBytes)
	if p.CapacityBytes != nil {
		g("berth_pool_capacity_bytes", *p.CapacityBytes)
		g("berth_pool_used_bytes", *p.UsedBytes)
		g("berth_pool_free_bytes", *p.FreeBytes)
		g("berth_pool_trash_entries", p.TrashEntries)
	}
	g("berth_pool_volumes", p.Volumes)
	g("berth_pool_snapshots", p.Snapshots)
	g("berth_pool_damaged_entries", p.DamagedVolumes, "type", "volume")
	g("berth_pool_damaged_entries", p.DamagedSnapshots, "type", "snapshot")
	g("berth_pool_volume_copies_in_progress", p.VolumeCopies)
	g("berth_pool_frozen_filesystems", p.Frozen)
	e.add("berth_pool_project_id_repairs_total", "counter", float64(p.ProjectIDRepairs), l...)
	return e
}

func (e *exposition) volume(v VolumeFacts) *exposition {
	l := []string{"volume_id", v.ID, "pool", v.Pool, "namespace", v.Namespace, "persistentvolumeclaim", v.Claim}
	e.add("berth_volume_capacity_bytes", "gauge", float64(v.CapacityBytes), l...)
	e.add("berth_volume_healthy", "gauge", float64(b2i(v.Healthy)), l...)
	if v.Ephemeral {
		e.add("berth_volume_ephemeral", "gauge", 1, l...)
	}
	if v.UsedBytes != nil {
		e.add("berth_volume_used_bytes", "gauge", float64(*v.UsedBytes), l...)
	}
	return e
}

func (e *exposition) copy(c CopyFacts) *exposition {
	e.add("berth_copy_done_bytes", "gauge", float64(c.DoneBytes), "volume_id", c.VolumeID, "pool", c.Pool)
	e.add("berth_copy_total_bytes", "gauge", float64(c.TotalBytes), "volume_id", c.VolumeID, "pool", c.Pool)
	return e
}

func (e *exposition) String() string {
	var names []string
	for n := range e.lines {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "# HELP %s test\n# TYPE %s %s\n", n, n, e.types[n])
		for _, l := range e.lines[n] {
			b.WriteString(l + "\n")
		}
	}
	// A family kubectl berth does not read, as the driver serves many.
	b.WriteString("# TYPE go_goroutines gauge\ngo_goroutines 12\n")
	return b.String()
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func i64(n int64) *int64 { return &n }

const (
	gib = int64(1) << 30
	mib = int64(1) << 20
)
