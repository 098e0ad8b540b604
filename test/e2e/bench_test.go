package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// The subjects of TestPVCToRunningLatency: Berth, rancher's local-path-provisioner
// (test/e2e/local-path) and, as the limit no provisioner can beat, the same pods with
// an emptyDir instead of a claim.
type benchSubject struct {
	name   string // in the figures' names
	class  string // the claims' StorageClass; "" for an emptyDir and no claim
	size   string // the claims' size (BERTH_BENCH_CLAIM_SIZE)
	static bool   // claims bound to PVs made beforehand, no provisioner (benchstatic_test.go)
}

var benchSubjects = []benchSubject{
	{name: "berth", class: "berth"},
	{name: "local-path", class: "local-path"},
	{name: "static", class: staticClass, static: true},
	{name: "emptydir"},
}

const (
	localPathManifest = "local-path/local-path-storage.yaml"
	localPathNS       = "local-path-storage"
	localPathRoot     = "/var/lib/berth-lp" // its config.json's path on every node
)

// figures prints each measurement as "figure: NAME VALUE UNIT" on stdout (for scripts)
// and in the test log, and keeps it for the ratios.
type figures map[string]float64

func (f figures) add(t *testing.T, name string, d time.Duration) {
	t.Helper()
	f.print(t, name, d.Seconds(), "s")
}

// ratio prints num/den, both figures in seconds, when both were measured, and keeps
// it under name.
func (f figures) ratio(t *testing.T, name, num, den string) {
	t.Helper()
	n, okN := f[num]
	d, okD := f[den]
	if !okN || !okD || d == 0 {
		t.Logf("figure %s not computed: %s or %s missing", name, num, den)
		return
	}
	f.print(t, name, n/d, "x")
}

// medianOver prints, as name, the median of the figures name-round1 ..
// name-roundN that were measured (none: nothing printed).
func (f figures) medianOver(t *testing.T, name string, rounds int, unit string) {
	t.Helper()
	var v []float64
	for r := 1; r <= rounds; r++ {
		if x, ok := f[fmt.Sprintf("%s-round%d", name, r)]; ok {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return
	}
	sort.Float64s(v)
	m := v[len(v)/2]
	if len(v)%2 == 0 {
		m = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	f.print(t, name, m, unit)
}

func (f figures) print(t *testing.T, name string, v float64, unit string) {
	t.Helper()
	f[name] = v
	line := fmt.Sprintf("figure: %s %.2f %s", name, v, unit)
	fmt.Println(line)
	t.Log(line)
}

// benchObjects is the manifest of one measured pod, with its claim unless the subject
// is the emptyDir. The pod has no nodeSelector: the scheduler places it.
func benchObjects(s benchSubject, name string) string {
	volume := "emptyDir: {}"
	if s.class != "" {
		volume = "persistentVolumeClaim: {claimName: " + name + "}"
	}
	pod := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: %s
    imagePullPolicy: IfNotPresent
    command: ["/bin/sh", "-c", "sleep 3600"]
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - name: data
    %s
`, name, busybox, volume)
	if s.class == "" {
		return pod
	}
	return pvc(name, s.class, s.size, "Filesystem") + "---\n" + pod
}

// ensureLocalPath installs local-path-provisioner from its manifest unless the
// StorageClass "local-path" exists, and removes it at cleanup once its volumes are gone.
// Call it before setup, so that the namespace (and its claims) go first.
func ensureLocalPath(t *testing.T) {
	t.Helper()
	if _, err := kubectlBare("get", "storageclass", "local-path", "-o", "name"); err == nil {
		t.Log("local-path-provisioner already installed: using it as it is")
		return
	}
	if out, err := kubectlBare("apply", "-f", localPathManifest); err != nil {
		t.Fatalf("installing local-path-provisioner: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		// Deleting the provisioner first would strand its volumes (reclaim Delete).
		for deadline := time.Now().Add(5 * time.Minute); pvsOfClass("local-path") != 0; time.Sleep(time.Second) {
			if time.Now().After(deadline) {
				t.Errorf("local-path volumes left after 5 minutes: removing the provisioner anyway")
				break
			}
		}
		if out, err := kubectlBare("delete", "-f", localPathManifest, "--wait=true", "--timeout=120s"); err != nil {
			t.Errorf("removing local-path-provisioner: %v\n%s", err, out)
		}
	})
	if out, err := kubectlBare("-n", localPathNS, "rollout", "status", "deploy/local-path-provisioner", "--timeout=120s"); err != nil {
		t.Fatalf("local-path-provisioner not ready (its image and busybox come from hack/images.sh local-path, "+
			"imported by hack/cluster-up.sh): %v\n%s", err, out)
	}
}

// create creates the objects in manifest in the namespace: one request per object,
// where apply makes two, so that the client adds less to what is measured.
func (c *cluster) create(manifest string) {
	c.t.Helper()
	c.fromManifest("create", manifest)
}

// bulkCreators is how many kubectl processes create the 200 pods' objects at once.
// One kubectl creates one object after the other (a few hundred ms each on a busy
// API server), which spread the "at once" over a minute, and twice as long for a
// subject with a claim per pod as for emptyDir: the harness, not the subject.
const bulkCreators = 8

// createAtOnce creates the objects (each a manifest of one pod and what it needs) in
// the namespace with workers kubectl processes at a time, each taking every
// workers-th one, so that creation ends at about the same time for every subject.
// Fewer objects than workers: one worker each (kubectl create fails on no objects).
func (c *cluster) createAtOnce(objs []string, workers int) {
	c.t.Helper()
	workers = min(workers, len(objs))
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		var b strings.Builder
		for i := w; i < len(objs); i += workers {
			b.WriteString(objs[i] + "---\n")
		}
		wg.Go(func() {
			cmd := exec.Command(kubectlPath(), "-n", c.ns, "create", "-f", "-")
			cmd.Stdin = strings.NewReader(b.String())
			if out, err := cmd.CombinedOutput(); err != nil {
				errs[w] = fmt.Errorf("kubectl create (creator %d): %v\n%s", w, err, out)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			c.t.Fatal(err)
		}
	}
}

// pvsOfClass counts the PVs of a StorageClass, -1 when kubectl fails.
func pvsOfClass(class string) int {
	out, err := kubectlBare("get", "pv", "-o", `jsonpath={range .items[*]}{.spec.storageClassName}{"\n"}{end}`)
	if err != nil {
		return -1
	}
	return countLines(out, class)
}

// countLines counts the lines of out equal to want.
func countLines(out, want string) int {
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if l == want {
			n++
		}
	}
	return n
}

// objects counts the objects kubectl get lists in the namespace, -1 when it fails.
func (c *cluster) objects(kinds string) int {
	out, err := c.try("get", kinds, "-o", "name")
	if err != nil {
		return -1
	}
	return len(strings.Fields(out))
}

// pvsOfNamespace counts the PVs bound (or once bound) to claims of the namespace.
func (c *cluster) pvsOfNamespace() int {
	out, err := kubectlBare("get", "pv", "-o", `jsonpath={range .items[*]}{.spec.claimRef.namespace}{"\n"}{end}`)
	if err != nil {
		return -1
	}
	return countLines(out, c.ns)
}

// berthVolumes counts the volumes in Berth's default pool on this node, with the
// deleted ones still in its trash (a deletion renames a volume there and purges it in
// the background, where local-path's teardown removes it before its PV goes), or -1
// when the pool cannot be read (the test then does not wait on it).
func berthVolumes() int {
	v, err := os.ReadDir(filepath.Join(defaultPool, "volumes"))
	if err != nil {
		return -1
	}
	trash, _ := os.ReadDir(filepath.Join(defaultPool, "trash"))
	return len(v) + len(trash)
}

// localPathLeft counts what local-path-provisioner still holds for the namespace: its
// helper pods, and its directories (<pv>_<namespace>_<claim>) visible on this node.
func (c *cluster) localPathLeft() int {
	out, err := kubectlBare("-n", localPathNS, "get", "pods", "-o", "name")
	if err != nil {
		return -1
	}
	n := strings.Count(out, "pod/helper-pod-")
	dirs, _ := filepath.Glob(filepath.Join(localPathRoot, "*_"+c.ns+"_*"))
	return n + len(dirs)
}

// deleteAll deletes the namespace's pods and claims and waits until everything is gone:
// the pods, the claims, their PVs and, for the provisioners, their host directories
// (Berth: its pool on this node, trash included, back to poolBefore volumes or fewer; local-path: its helper
// pods done and its directories removed; static: its PVs, deleted by the test once
// their claims are gone). It returns the time taken.
func (c *cluster) deleteAll(s benchSubject, poolBefore int, timeout time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	c.kubectl("delete", "pods,pvc", "--all", "--wait=false")
	staticDeleted := false // once, not at every poll
	c.waitFor("pods, claims, volumes and their directories gone", timeout, func() bool {
		if c.objects("pods,pvc") != 0 {
			return false
		}
		if s.static && !staticDeleted {
			staticDeleted = c.deleteStaticPVs()
		}
		if s.static && c.staticLeft() != 0 {
			return false
		}
		if c.pvsOfNamespace() != 0 {
			return false
		}
		switch s.name {
		case "berth":
			return poolBefore < 0 || berthVolumes() <= poolBefore
		case "local-path":
			return c.localPathLeft() == 0
		}
		return true
	})
	return time.Since(start)
}

// runningTimes polls the namespace's pods until n are Running and returns, for each,
// the time from start to when it was first seen Running.
func (c *cluster) runningTimes(start time.Time, n int, timeout time.Duration) []time.Duration {
	c.t.Helper()
	running := map[string]time.Duration{}
	c.waitFor(fmt.Sprintf("%d pods Running", n), timeout, func() bool {
		out, _ := c.try("get", "pods", "-o", `jsonpath={range .items[*]}{.metadata.name} {.status.phase}{"\n"}{end}`)
		now := time.Since(start)
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			if len(f) != 2 {
				continue
			}
			if f[1] == "Failed" {
				c.t.Fatalf("pod %s failed", f[0])
			}
			if _, seen := running[f[0]]; !seen && f[1] == "Running" {
				running[f[0]] = now
			}
		}
		return len(running) == n
	})
	all := make([]time.Duration, 0, n)
	for _, d := range running {
		all = append(all, d)
	}
	return all
}

// placement logs how many of the namespace's pods each node runs.
func (c *cluster) placement() {
	out, _ := c.try("get", "pods", "-o", `jsonpath={range .items[*]}{.spec.nodeName}{"\n"}{end}`)
	perNode := map[string]int{}
	for _, n := range strings.Fields(out) {
		perNode[n]++
	}
	c.t.Logf("pods per node: %v", perNode)
}

// bulkTimeout allows 6 s per pod, at least 10 minutes.
func bulkTimeout(n int) time.Duration {
	return max(10*time.Minute, time.Duration(n)*6*time.Second)
}

// phases logs where the namespace's pods spent their time from creation to Running,
// from the pods' own timestamps (whole seconds): created → PodScheduled (the
// scheduler; for a WaitForFirstConsumer claim, provisioning and binding too),
// scheduled → PodReadyToStartContainers (the kubelet: volumes mounted, sandbox made),
// then → the container started. Each as median, p90 and max over the pods.
func (c *cluster) phases() {
	c.t.Helper()
	var list struct {
		Items []struct {
			Metadata struct {
				CreationTimestamp time.Time `json:"creationTimestamp"`
			} `json:"metadata"`
			Status struct {
				Conditions []struct {
					Type               string    `json:"type"`
					LastTransitionTime time.Time `json:"lastTransitionTime"`
				} `json:"conditions"`
				ContainerStatuses []struct {
					State struct {
						Running *struct {
							StartedAt time.Time `json:"startedAt"`
						} `json:"running"`
					} `json:"state"`
				} `json:"containerStatuses"`
			} `json:"status"`
		} `json:"items"`
	}
	out, err := c.try("get", "pods", "-o", "json")
	if err == nil {
		err = json.Unmarshal([]byte(out), &list)
	}
	if err != nil {
		c.t.Logf("phases: %v", err)
		return
	}
	var sched, kubelet, start []time.Duration
	var first, last time.Time
	for _, p := range list.Items {
		if ct := p.Metadata.CreationTimestamp; first.IsZero() || ct.Before(first) {
			first = ct
		}
		if ct := p.Metadata.CreationTimestamp; ct.After(last) {
			last = ct
		}
		cond := map[string]time.Time{}
		for _, k := range p.Status.Conditions {
			cond[k.Type] = k.LastTransitionTime
		}
		s, okS := cond["PodScheduled"]
		r, okR := cond["PodReadyToStartContainers"]
		if !okS || !okR || len(p.Status.ContainerStatuses) == 0 || p.Status.ContainerStatuses[0].State.Running == nil {
			continue
		}
		sched = append(sched, s.Sub(p.Metadata.CreationTimestamp))
		kubelet = append(kubelet, r.Sub(s))
		start = append(start, p.Status.ContainerStatuses[0].State.Running.StartedAt.Sub(r))
	}
	if len(sched) == 0 {
		c.t.Logf("phases: no pod with all its timestamps")
		return
	}
	c.t.Logf("pods created from first to last in %v", last.Sub(first))
	for _, ph := range []struct {
		name string
		d    []time.Duration
	}{{"created to scheduled", sched}, {"scheduled to sandbox ready", kubelet}, {"sandbox ready to started", start}} {
		c.t.Logf("phase %s over %d pods: median %v, p90 %v, max %v", ph.name, len(ph.d), median(ph.d), pct(ph.d, 0.9), maxOf(ph.d))
	}
}
