package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// maxWriteGap is the longest a writer may go without a line on its volume across the
// upgrade: the driver is not on the data path, so only a busy node should slow it.
const maxWriteGap = 3 * time.Second

// writerScript prints its volume's mount (mountinfo: ID, parent, device, root, mount
// point...), then appends "<counter> <uptime>" to /data/log every 100 ms, fsyncing it.
const writerScript = `grep ' /data ' /proc/self/mountinfo
i=0
while :; do
  read up rest < /proc/uptime
  echo "$i $up" >> /data/log
  sync /data/log
  i=$((i+1))
  sleep 0.1
done`

// Upgrading from the previous release with volumes published in running pods: the old
// driver publishes a dir-pool and an image-pool volume, helm upgrades the release to
// this tree's chart and the image make e2e installed, and the pods write throughout.
// Nothing may notice: no container restarts, no gap in the writes longer than
// maxWriteGap, the lines written before intact, the same mount in the pod and on the
// host; and the new driver then unpublishes and deletes what the old one made.
func TestUpgrade(t *testing.T) {
	c := setup(t, alone)
	helm := os.Getenv("BERTH_HELM")
	if helm == "" {
		t.Skip("needs BERTH_HELM, the helm binary make e2e uses, to install the previous release")
	}
	prevChart, prevImage := previousRelease(t)
	current := c.saveRelease(helm)

	// The previous release, with make e2e's values less what its schema refuses.
	oldValues := pruneToSchema(t, current.values, filepath.Join(prevChart, "values.schema.json"))
	repo, tag, _ := strings.Cut(prevImage, ":")
	oldFile := writeValues(t, "previous.yaml", oldValues)
	c.helm(helm, "upgrade", "berth", prevChart, "-n", driverNS, "--reset-values", "-f", oldFile,
		"--set", "image.repository="+repo, "--set", "image.tag="+tag, "--wait", "--timeout", "3m")
	c.kubectlNS(driverNS, "rollout", "status", "ds/"+nodeDS, "--timeout=2m")
	oldPod := c.nodePod(prevImage)

	type writer struct{ claim, class, pool string }
	writers := []writer{{"dir", "berth", defaultPool}}
	if classPool(current.values, "berth-xfs") == "img" {
		writers = append(writers, writer{"img", "berth-xfs", "/var/lib/berth/images"})
	}
	for _, w := range writers {
		c.apply(pvc(w.claim, w.class, "300Mi", "Filesystem"))
		c.apply(podOn("w-"+w.claim, w.claim, writerScript, "Never"))
	}
	type seen struct{ podMount, hostMounts, log string }
	before := map[string]seen{}
	for _, w := range writers {
		pod := "w-" + w.claim
		c.waitReady(pod, 2*time.Minute)
		c.waitFor(pod+" writing", time.Minute, func() bool {
			out, _ := c.try("exec", pod, "--", "cat", "/data/log")
			return strings.Count(out, "\n") >= 20
		})
		before[w.claim] = seen{c.podMount(pod), c.hostMounts(pod, w.claim), c.kubectl("exec", pod, "--", "cat", "/data/log")}
	}

	// The upgrade: this tree's chart with make e2e's values, as hack/e2e.sh installs it.
	start := time.Now()
	c.helm(helm, "upgrade", "berth", current.chart, "-n", driverNS, "--reset-values", "-f", current.file, "--wait", "--timeout", "3m")
	c.kubectlNS(driverNS, "rollout", "status", "ds/"+nodeDS, "--timeout=2m")
	newPod := c.nodePod(current.image)
	if newPod == oldPod {
		t.Fatalf("node pod %s was not replaced by the upgrade", oldPod)
	}
	t.Logf("upgrade %s -> %s: helm upgrade and DaemonSet rollout took %v", prevImage, current.image, time.Since(start).Round(time.Second))
	time.Sleep(20 * time.Second) // the pods go on writing under the new driver

	for _, w := range writers {
		pod := "w-" + w.claim
		if n := c.jsonpath("pod/"+pod, "{.status.containerStatuses[0].restartCount}"); n != "0" {
			t.Errorf("%s: restartCount %s, want 0", pod, n)
		}
		if first := strings.SplitN(c.kubectl("logs", pod), "\n", 2)[0]; first != before[w.claim].podMount {
			t.Errorf("%s: the container started on %q, saw %q before the upgrade", pod, first, before[w.claim].podMount)
		}
		if now := c.podMount(pod); now != before[w.claim].podMount {
			t.Errorf("%s: /data remounted in the pod: %q before the upgrade, %q after", pod, before[w.claim].podMount, now)
		}
		if now := c.hostMounts(pod, w.claim); now != before[w.claim].hostMounts {
			t.Errorf("%s: publish target remounted on the host: %q before the upgrade, %q after", pod, before[w.claim].hostMounts, now)
		}
		log := c.kubectl("exec", pod, "--", "cat", "/data/log")
		if !strings.HasPrefix(log, before[w.claim].log) {
			t.Errorf("%s: the %d bytes written before the upgrade changed", pod, len(before[w.claim].log))
		}
		lines, gap, at := writeGaps(t, pod, log)
		afterLines := lines - strings.Count(before[w.claim].log, "\n")
		t.Logf("%s (%s pool): %d lines, %d after the upgrade began; largest gap between writes %v (before line %d)",
			pod, w.class, lines, afterLines, gap, at)
		if gap > maxWriteGap {
			t.Errorf("%s: %v without a write (before line %d), want at most %v", pod, gap, at, maxWriteGap)
		}
		if afterLines < 100 {
			t.Errorf("%s: only %d lines written since the upgrade began", pod, afterLines)
		}
	}

	// The new driver took over the old one's publications: it unpublishes them, and
	// deletes the volumes and their data from the host.
	for _, w := range writers {
		pod := "w-" + w.claim
		uid := c.jsonpath("pod/"+pod, "{.metadata.uid}")
		pv := c.jsonpath("pvc/"+w.claim, "{.spec.volumeName}")
		dir := c.hostPathOf(w.claim, w.pool)
		c.kubectl("delete", "pod", pod, "--wait=true", "--grace-period=1", "--timeout=2m")
		target := filepath.Join("/var/lib/kubelet/pods", uid, "volumes/kubernetes.io~csi", pv, "mount")
		if m := mountsAt(t, target); len(m) != 0 {
			t.Errorf("%s still mounted after its pod was deleted: %q", target, m)
		}
		c.kubectl("delete", "pvc", w.claim, "--wait=true", "--timeout=2m")
		c.waitFor("PV "+pv+" deleted and "+dir+" removed from the host", 2*time.Minute, func() bool {
			_, err := os.Stat(dir)
			_, perr := c.tryNS("", "get", "pv", pv)
			return os.IsNotExist(err) && perr != nil
		})
	}
}

// previousRelease builds (or finds cached) the previous release's chart and image
// with hack/previous-release.sh. It skips only where that cannot work, a clone
// without the release's commit (hack/e2e.sh then says so and sets
// BERTH_E2E_UPGRADE=0), and never otherwise in CI (BERTH_E2E_UPGRADE=1 or CI set).
func previousRelease(t *testing.T) (chart, image string) {
	t.Helper()
	if os.Getenv("BERTH_E2E_UPGRADE") == "0" {
		t.Skip("this clone does not hold the previous release's commit (a shallow clone): hack/e2e.sh skipped the upgrade test and said so")
	}
	out, err := exec.Command(filepath.Join("..", "..", "hack", "previous-release.sh")).Output()
	if err != nil {
		msg := fmt.Sprintf("the previous release could not be built here (hack/previous-release.sh: %v): %s", err, stderrOf(err))
		if os.Getenv("CI") != "" || os.Getenv("BERTH_E2E_UPGRADE") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if v, ok := strings.CutPrefix(l, "chart="); ok {
			chart = v
		} else if v, ok := strings.CutPrefix(l, "image="); ok {
			image = v
		}
	}
	if chart == "" || image == "" {
		t.Fatalf("hack/previous-release.sh printed %q, want chart= and image= lines", out)
	}
	return chart, image
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// release is the Berth release as make e2e installed it.
type release struct {
	chart  string         // this tree's charts/berth
	file   string         // its user-supplied values, saved
	values map[string]any // the same, parsed
	image  string         // the node pods' driver image
}

// saveRelease records the release and rolls it back to this revision at cleanup:
// chart, values and objects exactly as they were, whatever step failed.
func (c *cluster) saveRelease(helm string) release {
	t := c.t
	t.Helper()
	var status struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal([]byte(c.helm(helm, "status", "berth", "-n", driverNS, "-o", "json")), &status); err != nil || status.Version == 0 {
		t.Fatalf("helm status berth: revision %d, %v", status.Version, err)
	}
	saved := c.helm(helm, "get", "values", "berth", "-n", driverNS, "-o", "yaml")
	r := release{chart: filepath.Join("..", "..", "charts", "berth"), file: filepath.Join(t.TempDir(), "current.yaml")}
	if err := yaml.Unmarshal([]byte(saved), &r.values); err != nil {
		t.Fatalf("helm get values: %v\n%s", err, saved)
	}
	if err := os.WriteFile(r.file, []byte(saved), 0o600); err != nil {
		t.Fatal(err)
	}
	r.image = c.kubectlNS(driverNS, "get", "ds", nodeDS, "-o", `jsonpath={.spec.template.spec.containers[?(@.name=="berth")].image}`)
	t.Cleanup(func() {
		rev := strconv.Itoa(status.Version)
		if _, err := c.tryHelm(helm, "rollback", "berth", rev, "-n", driverNS, "--wait", "--timeout", "3m"); err != nil {
			t.Errorf("rolling the release back to revision %s: %v", rev, err)
		}
		if _, err := c.tryNS(driverNS, "rollout", "status", "ds/"+nodeDS, "--timeout=2m"); err != nil {
			t.Errorf("node pods after the rollback: %v", err)
		}
	})
	return r
}

// nodePod is the name of thisNode's node pod, once it runs image and is Ready.
func (c *cluster) nodePod(image string) string {
	c.t.Helper()
	var name string
	c.waitFor("node pod with "+image, 2*time.Minute, func() bool {
		out, _ := c.tryNS(driverNS, "get", "pods", "-l", "app.kubernetes.io/component=node", onThisNode, "-o",
			`jsonpath={range .items[*]}{.metadata.name} {.spec.containers[?(@.name=="berth")].image} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		f := strings.Fields(out)
		if len(f) != 3 || f[1] != image || f[2] != "True" {
			return false
		}
		name = f[0]
		return true
	})
	return name
}

// podMount is the pod's /proc/self/mountinfo line for /data: mount ID, parent ID,
// device, root, mount point, options.
func (c *cluster) podMount(pod string) string {
	c.t.Helper()
	return strings.TrimSpace(c.kubectl("exec", pod, "--", "grep", " /data ", "/proc/self/mountinfo"))
}

// hostMounts is every host mountinfo line at the pod's publish target for claim.
func (c *cluster) hostMounts(pod, claim string) string {
	c.t.Helper()
	uid := c.jsonpath("pod/"+pod, "{.metadata.uid}")
	pv := c.jsonpath("pvc/"+claim, "{.spec.volumeName}")
	target := filepath.Join("/var/lib/kubelet/pods", uid, "volumes/kubernetes.io~csi", pv, "mount")
	m := mountsAt(c.t, target)
	if len(m) == 0 {
		c.t.Fatalf("%s: nothing mounted at its publish target %s", pod, target)
	}
	return strings.Join(m, "\n")
}

// mountsAt lists this process's mountinfo lines whose mount point is path.
func mountsAt(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == path {
			out = append(out, l)
		}
	}
	return out
}

// writeGaps checks the writer's log ("<counter> <uptime>" lines, counters 0, 1, 2...)
// and returns its line count and the longest time between two lines, with the line
// that ended it.
func writeGaps(t *testing.T, pod, log string) (lines int, gap time.Duration, at int) {
	t.Helper()
	prev := -1.0
	for i, l := range strings.Split(strings.TrimSuffix(log, "\n"), "\n") {
		n, up, ok := strings.Cut(l, " ")
		sec, err := strconv.ParseFloat(up, 64)
		if !ok || n != strconv.Itoa(i) || err != nil {
			t.Errorf("%s: line %d of /data/log is %q, want %d <uptime>", pod, i, l, i)
			return i, gap, at
		}
		if d := time.Duration((sec - prev) * float64(time.Second)); prev >= 0 && d > gap {
			gap, at = d, i
		}
		prev, lines = sec, i+1
	}
	return lines, gap.Round(10 * time.Millisecond), at
}

// classPool is the pool of the StorageClass name in the chart values, "" if none.
func classPool(values map[string]any, name string) string {
	classes, _ := values["storageClasses"].([]any)
	for _, c := range classes {
		if m, _ := c.(map[string]any); m["name"] == name {
			p, _ := m["pool"].(string)
			return p
		}
	}
	return ""
}

func writeValues(t *testing.T, name string, values map[string]any) string {
	t.Helper()
	b, err := yaml.Marshal(values)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// pruneToSchema copies values without the keys an older chart's values.schema.json
// does not declare where it refuses additional properties (such as a newer
// sidecars.provisioner.timeout), logging each one dropped.
func pruneToSchema(t *testing.T, values map[string]any, schemaFile string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(schemaFile)
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(b, &schema); err != nil {
		t.Fatalf("%s: %v", schemaFile, err)
	}
	defs, _ := schema["definitions"].(map[string]any)
	resolve := func(s map[string]any) map[string]any {
		if ref, ok := s["$ref"].(string); ok {
			d, _ := defs[strings.TrimPrefix(ref, "#/definitions/")].(map[string]any)
			return d
		}
		return s
	}
	var prune func(v any, s map[string]any, path string) any
	prune = func(v any, s map[string]any, path string) any {
		s = resolve(s)
		if s == nil {
			return v
		}
		switch v := v.(type) {
		case map[string]any:
			props, _ := s["properties"].(map[string]any)
			closed := s["additionalProperties"] == false
			out := map[string]any{}
			for _, k := range slices.Sorted(maps.Keys(v)) {
				ps, declared := props[k].(map[string]any)
				if !declared && closed {
					t.Logf("the previous chart does not take %s%s: left out", path, k)
					continue
				}
				out[k] = prune(v[k], ps, path+k+".")
			}
			return out
		case []any:
			items, _ := s["items"].(map[string]any)
			out := make([]any, len(v))
			for i := range v {
				out[i] = prune(v[i], items, fmt.Sprintf("%s[%d].", strings.TrimSuffix(path, "."), i))
			}
			return out
		}
		return v
	}
	return prune(values, schema, "").(map[string]any)
}
