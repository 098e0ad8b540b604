package kubectlberth

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/berth-csi/berth/pkg/mover"
	"github.com/berth-csi/berth/pkg/orphans"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// Facts come from two places (docs/operations.md, "kubectl berth"): the API objects
// (PersistentVolumes of the driver, VolumeSnapshotContents, the driver's pods) and
// each driver pod's /metrics, read through the API server's pod proxy, so nothing
// but the API server needs to be reachable.

const (
	// driverContainer is the driver's container in the chart's pods.
	driverContainer = "berth"
	// metricsPortName is its metrics port's name (metrics.enabled).
	metricsPortName = "metrics"
	// podSelector finds the chart's driver pods, node plugins and controller.
	podSelector = "app.kubernetes.io/name=berth"
	// componentLabel tells a node plugin ("node") from the controller ("controller").
	componentLabel = "app.kubernetes.io/component"
	// topologyKey is the node segment of node-local volumes (storage.TopologyKey;
	// pkg/storage is not imported so that the plugin builds for any OS).
	topologyKey = mover.TopologyKey
	// defaultEndpoint is the driver's --endpoint when its args do not say.
	defaultEndpoint = "unix:///csi/csi.sock"
)

var vscResource = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotcontents"}

// Clients reach the cluster. Tests give fakes.
type Clients struct {
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
	Exec    Executor
}

// Source is one driver pod and what its /metrics said.
type Source struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	Node      string `json:"node"`
	Component string `json:"component"`
	// Endpoint and Command are what trash-orphan needs: the driver's socket and binary.
	Endpoint string  `json:"-"`
	Command  string  `json:"-"`
	Err      error   `json:"-"`
	Scrape   *Scrape `json:"-"`
}

// findSources lists the driver's pods (in namespace, or in every namespace when it is
// empty), node plugins first, each by node.
func findSources(ctx context.Context, kube kubernetes.Interface, namespace string) ([]*Source, error) {
	pods, err := kube.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: podSelector})
	if err != nil {
		return nil, fmt.Errorf("list the driver's pods: %w", err)
	}
	var out []*Source
	for i := range pods.Items {
		p := &pods.Items[i]
		comp := p.Labels[componentLabel]
		if comp != "node" && comp != "controller" {
			continue
		}
		out = append(out, sourceOf(p, comp))
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Component != b.Component {
			return a.Component == "node"
		}
		if a.Node != b.Node {
			return a.Node < b.Node
		}
		return a.Pod < b.Pod
	})
	return out, nil
}

func sourceOf(p *corev1.Pod, comp string) *Source {
	s := &Source{Namespace: p.Namespace, Pod: p.Name, Node: p.Spec.NodeName, Component: comp, Endpoint: defaultEndpoint, Command: "/csi-driver"}
	var c *corev1.Container
	for i := range p.Spec.Containers {
		if p.Spec.Containers[i].Name == driverContainer {
			c = &p.Spec.Containers[i]
		}
	}
	if c == nil {
		s.Err = fmt.Errorf("pod %s/%s has no %q container", p.Namespace, p.Name, driverContainer)
		return s
	}
	if len(c.Command) > 0 {
		s.Command = c.Command[0]
	}
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--endpoint="); ok {
			s.Endpoint = v
		}
	}
	if p.Status.Phase != corev1.PodRunning {
		s.Err = fmt.Errorf("pod %s/%s is %s", p.Namespace, p.Name, p.Status.Phase)
	}
	return s
}

// metricsPort is the driver container's metrics port, 0 when metrics are off.
func metricsPort(p *corev1.Pod) int32 {
	for _, c := range p.Spec.Containers {
		if c.Name != driverContainer {
			continue
		}
		for _, port := range c.Ports {
			if port.Name == metricsPortName {
				return port.ContainerPort
			}
		}
	}
	return 0
}

// scrapeAll reads every source's metrics: GET
// /api/v1/namespaces/<ns>/pods/<pod>:<port>/proxy/metrics. A source that cannot be
// read keeps its error; the others are still read.
func scrapeAll(ctx context.Context, kube kubernetes.Interface, sources []*Source) {
	for _, s := range sources {
		s.Scrape = nil
		if s.Err != nil && !errors.Is(s.Err, errScrape) {
			continue
		}
		s.Err = nil
		pod, err := kube.CoreV1().Pods(s.Namespace).Get(ctx, s.Pod, metav1.GetOptions{})
		if err != nil {
			s.Err = fmt.Errorf("%w: %v", errScrape, err)
			continue
		}
		port := metricsPort(pod)
		if port == 0 {
			s.Err = fmt.Errorf("%w: pod %s/%s serves no metrics (chart value metrics.enabled)", errScrape, s.Namespace, s.Pod)
			continue
		}
		raw, err := kube.CoreV1().Pods(s.Namespace).ProxyGet("", s.Pod, strconv.Itoa(int(port)), "metrics", nil).DoRaw(ctx)
		if err != nil {
			s.Err = fmt.Errorf("%w: read metrics of pod %s/%s through the API server: %v", errScrape, s.Namespace, s.Pod, err)
			continue
		}
		if s.Scrape, err = ParseMetrics(raw); err != nil {
			s.Err = fmt.Errorf("%w: pod %s/%s: %v", errScrape, s.Namespace, s.Pod, err)
		}
	}
}

// errScrape marks a source whose metrics could not be read (tried again on a second read).
var errScrape = errors.New("metrics unreadable")

// Facts is everything the commands judge from.
type Facts struct {
	Sources []*Source
	PVs     []corev1.PersistentVolume
	// Snapshots counts the VolumeSnapshotContents of each volume ID; nil when they
	// could not be listed (no snapshot CRDs).
	Snapshots map[string]int
}

// gather reads the facts: the driver's PVs, the snapshot contents, the pods and
// their metrics.
func gather(ctx context.Context, c *Clients, o *Options) (*Facts, error) {
	f := &Facts{}
	var err error
	if f.PVs, err = driverPVs(ctx, c.Kube, o.DriverName); err != nil {
		return nil, err
	}
	if f.Sources, err = findSources(ctx, c.Kube, o.DriverNamespace); err != nil {
		return nil, err
	}
	scrapeAll(ctx, c.Kube, f.Sources)
	if c.Dynamic != nil {
		f.Snapshots, err = snapshotCounts(ctx, c.Dynamic, o.DriverName)
		if err != nil {
			return nil, err
		}
	}
	return f, nil
}

// driverPVs lists the PersistentVolumes whose spec.csi.driver is the driver's.
func driverPVs(ctx context.Context, kube kubernetes.Interface, driver string) ([]corev1.PersistentVolume, error) {
	list, err := kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list PersistentVolumes: %w", err)
	}
	var out []corev1.PersistentVolume
	for _, pv := range list.Items {
		if _, ok := orphans.HandleOf(&pv, driver); ok {
			out = append(out, pv)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// pvNaming returns the PersistentVolume whose CSI volume handle is id, read afresh
// from the API. PVs of every driver are compared: stricter than needed, never less.
func pvNaming(ctx context.Context, kube kubernetes.Interface, id string) (string, error) {
	list, err := kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("list PersistentVolumes: %w", err)
	}
	for _, pv := range list.Items {
		if pv.Spec.CSI != nil && pv.Spec.CSI.VolumeHandle == id {
			return pv.Name, nil
		}
	}
	return "", nil
}

// snapshotCounts counts the driver's VolumeSnapshotContents by source volume.
func snapshotCounts(ctx context.Context, dyn dynamic.Interface, driver string) (map[string]int, error) {
	list, err := dyn.Resource(vscResource).List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) || apierrors.IsForbidden(err) {
		return nil, nil // no snapshot CRDs, or not allowed: the count is unknown
	}
	if err != nil {
		return nil, fmt.Errorf("list VolumeSnapshotContents: %w", err)
	}
	out := map[string]int{}
	for _, item := range list.Items {
		d, _, _ := unstructured.NestedString(item.Object, "spec", "driver")
		if d != driver {
			continue
		}
		h, _, _ := unstructured.NestedString(item.Object, "spec", "source", "volumeHandle")
		if h == "" {
			// A pre-provisioned content names no source volume; its status may.
			continue
		}
		out[h]++
	}
	return out, nil
}

// poolOf is the pool named by a Berth volume ID, b1-<pool>-<hash> (storage.VolumeID);
// "" for any other handle (an adopted directory's).
func poolOf(id string) string {
	rest, ok := strings.CutPrefix(id, "b1-")
	if !ok {
		return ""
	}
	i := strings.LastIndexByte(rest, '-')
	if i <= 0 || len(rest)-i-1 != 32 {
		return ""
	}
	return rest[:i]
}

// lookup finds a volume in the sources: on node when it is given (node-local), on
// any source otherwise (shared pools are served by every node and the controller).
// known is false when no source that could hold it was read.
func (f *Facts) lookup(id, node string) (v VolumeFacts, src *Source, known bool) {
	pool := poolOf(id)
	for _, s := range f.Sources {
		if node != "" && s.Node != node || s.Component == "controller" && node != "" {
			continue
		}
		if s.Scrape == nil {
			continue
		}
		if vf, ok := s.Scrape.Volumes[id]; ok {
			return vf, s, true
		}
		for _, p := range s.Scrape.Pools {
			if p.Pool == pool && p.Served {
				known = true
			}
		}
	}
	return VolumeFacts{}, nil, known
}

// copyOf finds a copy in progress into volume id.
func (f *Facts) copyOf(id string) (CopyFacts, bool) {
	for _, s := range f.Sources {
		if s.Scrape == nil {
			continue
		}
		if c, ok := s.Scrape.Copies[id]; ok {
			return c, true
		}
	}
	return CopyFacts{}, false
}
