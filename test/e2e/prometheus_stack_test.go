package e2e

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The e2e monitoring stack (test/e2e/prometheus, docs/e2e.md "Monitoring stack"): a real
// prometheus-operator running a real Prometheus, both built from the Go module proxy by
// hack/k8s-tools/build.sh prometheus, their images by hack/images.sh prometheus, imported
// into every node by hack/cluster-up.sh.
const (
	promNS               = "berth-monitoring"
	promOperatorManifest = "prometheus/operator.yaml"
	promManifest         = "prometheus/prometheus.yaml"
	promPod              = "prometheus-berth-0" // the operator's StatefulSet prometheus-<name>
	// promAPI is Prometheus's HTTP root through the API server's service proxy (it
	// forwards to the pod's address: there is no kube-proxy).
	promAPI = "/api/v1/namespaces/" + promNS + "/services/prometheus-berth:9090/proxy"
)

// promCRDs are the operator's CRDs the stack applies: the Prometheus controller's
// informers need the four it watches (Probe included, or its caches never sync) and
// Prometheus itself. The others (Alertmanager, ThanosRuler, PrometheusAgent,
// ScrapeConfig, AlertmanagerConfig) stay out: the operator skips their controllers.
var promCRDs = []string{"podmonitors", "probes", "prometheuses", "prometheusrules", "servicemonitors"}

// promStack is what hack/versions.sh says of the stack: its cache directory (binaries
// and crds/) and the versions the manifests must name.
type promStack struct {
	dir, prometheusTag, operatorVersion string
}

// readPromStack asks hack/versions.sh (the one source of the versions, BERTH_CACHE
// honoured) where build.sh put the stack.
func readPromStack() (promStack, error) {
	out, err := exec.Command("bash", "-c",
		`source "$1" && echo "$BERTH_CACHE/prometheus-$PROM_STACK_KEY $PROMETHEUS_TAG $PROM_OPERATOR_VERSION"`,
		"bash", filepath.Join("..", "..", "hack", "versions.sh")).Output()
	if err != nil {
		return promStack{}, fmt.Errorf("reading hack/versions.sh: %v: %s", err, stderrOf(err))
	}
	f := strings.Fields(string(out))
	if len(f) != 3 {
		return promStack{}, fmt.Errorf("hack/versions.sh gave %q, want a directory and two versions", out)
	}
	return promStack{dir: f[0], prometheusTag: f[1], operatorVersion: f[2]}, nil
}

// checkManifests reports the images the manifests name that are not those of
// hack/versions.sh (the manifests are plain YAML, kubectl-appliable as they are).
func (s promStack) checkManifests() error {
	want := map[string][]string{
		promManifest: {"image: quay.io/prometheus/prometheus:" + s.prometheusTag, "version: " + s.prometheusTag},
		promOperatorManifest: {
			"image: quay.io/prometheus-operator/prometheus-operator:" + s.operatorVersion,
			"--prometheus-config-reloader=quay.io/prometheus-operator/prometheus-config-reloader:" + s.operatorVersion,
		},
	}
	for file, lines := range want {
		b, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		for _, l := range lines {
			if !strings.Contains(string(b), l) {
				return fmt.Errorf("%s does not say %q (hack/versions.sh): change both together", file, l)
			}
		}
	}
	return nil
}

// TestPrometheusManifestsFollowVersions needs no cluster: the manifests name the
// images hack/versions.sh makes hack/images.sh build.
func TestPrometheusManifestsFollowVersions(t *testing.T) {
	s, err := readPromStack()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.checkManifests(); err != nil {
		t.Fatal(err)
	}
}

// installPrometheusStack installs the operator's CRDs (server-side: the larger ones
// pass the client-side annotation's size limit), the operator and a Prometheus in
// berth-monitoring, waits until the operator's Deployment and the Prometheus pod are
// Ready and Prometheus answers through the service proxy, and removes them all at
// cleanup: the Prometheus resource first (while the operator can still finish it), then
// the operator and its namespace, the CRDs last (only those it created), waiting until
// each is gone. A stack already there (a Prometheus "berth" in berth-monitoring) is used
// as it is and left. Call it before setup, so that the test's namespace goes first.
func installPrometheusStack(t *testing.T) {
	t.Helper()
	if os.Getenv("BERTH_E2E") != "1" {
		t.Skip("end-to-end test: needs a cluster with Berth installed; run make e2e (sets BERTH_E2E=1)")
	}
	if _, err := kubectlBare("-n", promNS, "get", "prometheus", "berth", "-o", "name"); err == nil {
		t.Log("the monitoring stack is installed already: using it as it is")
		waitPrometheusStack(t)
		return
	}
	s, err := readPromStack()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.checkManifests(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.dir, ".done")); err != nil {
		t.Fatalf("%s is not built (hack/k8s-tools/build.sh prometheus and hack/images.sh prometheus; "+
			"hack/cluster-up.sh runs both and imports the images): %v", s.dir, err)
	}

	var created []string // CRDs this call made, removed at cleanup
	t.Cleanup(func() { removePrometheusStack(t, created) })
	for _, name := range promCRDs {
		crd := name + ".monitoring.coreos.com"
		if _, err := kubectlBare("get", "crd", crd, "-o", "name"); err != nil {
			created = append(created, crd)
		}
		file := filepath.Join(s.dir, "crds", "monitoring.coreos.com_"+name+".yaml")
		if out, err := kubectlBare("apply", "--server-side", "--force-conflicts", "-f", file); err != nil {
			t.Fatalf("applying %s: %v\n%s", file, err, out)
		}
	}
	crds := make([]string, len(promCRDs))
	for i, name := range promCRDs {
		crds[i] = "crd/" + name + ".monitoring.coreos.com"
	}
	if out, err := kubectlBare(append([]string{"wait", "--for=condition=Established", "--timeout=60s"}, crds...)...); err != nil {
		t.Fatalf("CRDs not established: %v\n%s", err, out)
	}
	applyWithRetry(t, promOperatorManifest)
	applyWithRetry(t, promManifest)
	waitPrometheusStack(t)
}

// applyWithRetry applies a manifest, again for up to 30 s while kubectl's discovery
// may not yet know kinds whose CRDs were just established.
func applyWithRetry(t *testing.T, manifest string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := kubectlBare("apply", "-f", manifest)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("applying %s: %v\n%s", manifest, err, out)
		}
		time.Sleep(time.Second)
	}
}

// waitPrometheusStack waits for the operator, the Prometheus pod it makes, and
// Prometheus's readiness through the service proxy; on failure it logs what
// berth-monitoring holds and the operator's log.
func waitPrometheusStack(t *testing.T) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		out, _ := kubectlBare("-n", promNS, "get", "all,prometheus,events", "-o", "wide")
		logs, _ := kubectlBare("-n", promNS, "logs", "deploy/prometheus-operator", "--tail=50")
		t.Fatalf(format+"\n%s: %s\noperator log:\n%s", append(args, promNS, out, logs)...)
	}
	if out, err := kubectlBare("-n", promNS, "rollout", "status", "deploy/prometheus-operator", "--timeout=120s"); err != nil {
		fail("prometheus-operator not ready (its image comes from hack/images.sh prometheus, imported by hack/cluster-up.sh): %v\n%s", err, out)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := kubectlBare("-n", promNS, "get", "pod", promPod, "-o", "name"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			fail("the operator made no pod %s in 2 minutes", promPod)
		}
		time.Sleep(time.Second)
	}
	if out, err := kubectlBare("-n", promNS, "wait", "--for=condition=Ready", "pod/"+promPod, "--timeout=180s"); err != nil {
		fail("Prometheus not ready: %v\n%s", err, out)
	}
	// The Service's endpoints follow the pod's readiness a moment later.
	deadline = time.Now().Add(time.Minute)
	for {
		_, err := kubectlBare("get", "--raw", promAPI+"/-/ready")
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			fail("Prometheus not reachable through the service proxy (%s/-/ready): %v", promAPI, err)
		}
		time.Sleep(time.Second)
	}
}

// removePrometheusStack deletes what installPrometheusStack applied, in order, and the
// CRDs it created, waiting until they are gone. Failures are errors, not fatal: the
// following steps still run.
func removePrometheusStack(t *testing.T, crds []string) {
	t.Helper()
	for _, m := range []string{promManifest, promOperatorManifest} {
		if out, err := kubectlBare("delete", "-f", m, "--ignore-not-found", "--wait=true", "--timeout=180s"); err != nil {
			t.Errorf("removing %s: %v\n%s", m, err, out)
		}
	}
	if len(crds) == 0 {
		return
	}
	args := []string{"delete", "crd", "--ignore-not-found", "--wait=true", "--timeout=120s"}
	if out, err := kubectlBare(append(args, crds...)...); err != nil {
		t.Errorf("removing the monitoring CRDs: %v\n%s", err, out)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(time.Second) {
		out, _ := kubectlBare(append([]string{"get", "crd", "--ignore-not-found", "-o", "name"}, crds...)...)
		if strings.TrimSpace(out) == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("monitoring CRDs still there after 2 minutes: %s", out)
			return
		}
	}
}

// promGet GETs path (below Prometheus's root, e.g. /api/v1/rules) with query through
// the service proxy and decodes the API's envelope, returning its data.
func promGet(path string, query url.Values) (json.RawMessage, error) {
	p := promAPI + path
	if len(query) > 0 {
		p += "?" + query.Encode()
	}
	out, err := kubectlBare("get", "--raw", p)
	if err != nil {
		return nil, err
	}
	var env struct {
		Status    string          `json:"status"`
		Data      json.RawMessage `json:"data"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &env); err != nil {
		return nil, fmt.Errorf("GET %s: %v: %.200s", p, err, out)
	}
	if env.Status != "success" {
		return nil, fmt.Errorf("GET %s: %s %s: %s", p, env.Status, env.ErrorType, env.Error)
	}
	return env.Data, nil
}

// sample is one element of an instant query's result: a series' labels (__name__
// included when the expression keeps it) and its value at time T.
type sample struct {
	Metric map[string]string
	T      time.Time
	Value  float64
}

// rawSample is a sample as the API gives it: [unix seconds, "value"].
type rawSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// tryPromQuery evaluates expr now (GET /api/v1/query). A vector gives a sample per
// series, a scalar one sample without labels; a query that fails (a bad expression,
// Prometheus not reachable) is an error, for tests that poll.
func tryPromQuery(expr string) ([]sample, error) {
	data, err := promGet("/api/v1/query", url.Values{"query": {expr}})
	if err != nil {
		return nil, err
	}
	var r struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("query %q: %v", expr, err)
	}
	var raw []rawSample
	switch r.ResultType {
	case "vector":
		if err := json.Unmarshal(r.Result, &raw); err != nil {
			return nil, fmt.Errorf("query %q: %v", expr, err)
		}
	case "scalar":
		raw = make([]rawSample, 1)
		if err := json.Unmarshal(r.Result, &raw[0].Value); err != nil {
			return nil, fmt.Errorf("query %q: %v", expr, err)
		}
	default:
		return nil, fmt.Errorf("query %q: result type %q, want vector or scalar", expr, r.ResultType)
	}
	samples := make([]sample, 0, len(raw))
	for _, s := range raw {
		ts, ok1 := s.Value[0].(float64)
		vs, ok2 := s.Value[1].(string)
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("query %q: value %v is not [time, \"value\"]", expr, s.Value)
		}
		v, err := strconv.ParseFloat(vs, 64) // NaN, +Inf and -Inf included
		if err != nil {
			return nil, fmt.Errorf("query %q: value %q: %v", expr, vs, err)
		}
		samples = append(samples, sample{Metric: s.Metric, T: time.UnixMilli(int64(ts * 1000)), Value: v})
	}
	return samples, nil
}

// promQuery is tryPromQuery, fatal on error.
// waitQuery polls expr until it answers n samples, for d at most.
func waitQuery(expr string, n int, d time.Duration) ([]sample, error) {
	deadline := time.Now().Add(d)
	for {
		s, err := tryPromQuery(expr)
		if err == nil && len(s) == n {
			return s, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("%d series after %v, want %d", len(s), d, n)
			}
			return s, err
		}
		time.Sleep(2 * time.Second)
	}
}

func promQuery(t *testing.T, expr string) []sample {
	t.Helper()
	s, err := tryPromQuery(expr)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// promTarget is one of Prometheus's active scrape targets (GET /api/v1/targets).
type promTarget struct {
	Labels     map[string]string `json:"labels"` // after relabelling: job, instance, pod...
	ScrapePool string            `json:"scrapePool"`
	ScrapeURL  string            `json:"scrapeUrl"`
	Health     string            `json:"health"` // up, down or unknown (not scraped yet)
	LastError  string            `json:"lastError"`
	LastScrape time.Time         `json:"lastScrape"`
}

// promTargets lists the active targets (dropped ones are left out), fatal on error.
func promTargets(t *testing.T) []promTarget {
	t.Helper()
	data, err := promGet("/api/v1/targets", url.Values{"state": {"active"}})
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		ActiveTargets []promTarget `json:"activeTargets"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("targets: %v", err)
	}
	return r.ActiveTargets
}
