// Package chart renders charts/berth with helm template and checks what it renders.
// It needs the helm binary that hack/deploy.sh builds (make deploy) and skips, saying
// so, without it.
package chart

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
	"sigs.k8s.io/yaml"
)

// object is a rendered manifest, read loosely.
type object struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Data              map[string]string `json:"data"`
	Parameters        map[string]string `json:"parameters"`
	VolumeBindingMode string            `json:"volumeBindingMode"`
	Rules             []rule            `json:"rules"`
	Spec              struct {
		VolumeLifecycleModes []string `json:"volumeLifecycleModes"`
		Template             struct {
			Spec podSpec `json:"spec"`
		} `json:"template"`
	} `json:"spec"`
}

// rule is one rule of a Role or ClusterRole.
type rule struct {
	APIGroups []string `json:"apiGroups"`
	Resources []string `json:"resources"`
	Verbs     []string `json:"verbs"`
}

type podSpec struct {
	AutomountServiceAccountToken *bool       `json:"automountServiceAccountToken"`
	Containers                   []container `json:"containers"`
	Volumes                      []volume    `json:"volumes"`
}

type volume struct {
	Name      string `json:"name"`
	Projected *struct {
		Sources []map[string]any `json:"sources"`
	} `json:"projected"`
	Secret *struct {
		SecretName string `json:"secretName"`
	} `json:"secret"`
	HostPath *struct {
		Path string `json:"path"`
	} `json:"hostPath"`
	EmptyDir *struct{} `json:"emptyDir"`
}

type container struct {
	Name            string        `json:"name"`
	Args            []string      `json:"args"`
	Env             []envVar      `json:"env"`
	Ports           []port        `json:"ports"`
	VolumeMounts    []volumeMount `json:"volumeMounts"`
	SecurityContext *struct {
		Privileged   bool   `json:"privileged"`
		RunAsNonRoot bool   `json:"runAsNonRoot"`
		RunAsUser    *int64 `json:"runAsUser"`
	} `json:"securityContext"`
}

type envVar struct {
	Name      string `json:"name"`
	ValueFrom *struct {
		FieldRef struct {
			FieldPath string `json:"fieldPath"`
		} `json:"fieldRef"`
	} `json:"valueFrom"`
}

type port struct {
	Name          string `json:"name"`
	ContainerPort int    `json:"containerPort"`
}

type volumeMount struct {
	Name      string `json:"name"`
	MountPath string `json:"mountPath"`
	ReadOnly  bool   `json:"readOnly"`
}

func (o object) args(name string) []string { return o.container(name).Args }

// container is the pod template's container of that name (zero when none).
func (o object) container(name string) container {
	for _, c := range o.Spec.Template.Spec.Containers {
		if c.Name == name {
			return c
		}
	}
	return container{}
}

// helm finds the helm binary at the version hack/versions.sh names, and the
// Kubernetes version to render for.
func helm(t *testing.T, root string) (bin, kube string) {
	t.Helper()
	f, err := os.Open(filepath.Join(root, "hack", "versions.sh"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	version := ""
	for s := bufio.NewScanner(f); s.Scan(); {
		if v, ok := strings.CutPrefix(s.Text(), "HELM_VERSION="); ok {
			version = v
		}
		if v, ok := strings.CutPrefix(s.Text(), "K8S_VERSION=v"); ok {
			kube = v
		}
	}
	cache := os.Getenv("BERTH_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "berth")
	}
	bin = filepath.Join(cache, "tools", "helm-"+version)
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("helm %s is not built (%v): make deploy builds it", version, err)
	}
	return bin, kube
}

// tryTemplate runs helm template over the chart with values and returns its
// output, for the values the chart must refuse.
func tryTemplate(t *testing.T, values string) (string, error) {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin, kube := helm(t, root)
	file := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(file, []byte(values), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "template", "berth", filepath.Join(root, "charts", "berth"), "--kube-version", kube, "-f", file).CombinedOutput()
	return string(out), err
}

// render runs helm template over the chart with the given values file ("" for the
// defaults) and returns the objects by kind/name.
func render(t *testing.T, values string) map[string]object {
	t.Helper()
	objs := map[string]object{}
	for key, doc := range renderDocs(t, values) {
		var o object
		if err := yaml.Unmarshal(doc, &o); err != nil {
			t.Fatalf("rendered YAML: %v\n%s", err, doc)
		}
		objs[key] = o
	}
	return objs
}

// renderDocs is render's YAML: each object's document by kind/name.
func renderDocs(t *testing.T, values string) map[string][]byte {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin, kube := helm(t, root)
	args := []string{"template", "berth", filepath.Join(root, "charts", "berth"), "--namespace", "kube-system", "--kube-version", kube}
	if values != "" {
		file := filepath.Join(t.TempDir(), "values.yaml")
		if err := os.WriteFile(file, []byte(values), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-f", file)
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	docs := map[string][]byte{}
	for _, doc := range bytes.Split(out, []byte("\n---\n")) {
		var o object
		if err := yaml.Unmarshal(doc, &o); err != nil {
			t.Fatalf("rendered YAML: %v\n%s", err, doc)
		}
		if o.Kind != "" {
			docs[o.Kind+"/"+o.Metadata.Name] = doc
		}
	}
	return docs
}

func TestDefaultValuesRenderNoController(t *testing.T) {
	objs := render(t, "")
	if _, ok := objs["DaemonSet/berth-node"]; !ok {
		t.Fatal("no node DaemonSet rendered")
	}
	for key := range objs {
		if strings.Contains(key, "berth-controller") {
			t.Errorf("%s rendered without a shared pool", key)
		}
	}
	if args := objs["DaemonSet/berth-node"].args("csi-provisioner"); slices.Contains(args, "--node-deployment-immediate-binding=false") {
		t.Errorf("node provisioner leaves Immediate claims to a controller that does not exist: %q", args)
	}
	// A claim whose restore or clone copies in the background is bound at most 30 s
	// after the copy ends, not after the sidecar's 5-minute backoff.
	if args := objs["DaemonSet/berth-node"].args("csi-provisioner"); !slices.Contains(args, "--retry-interval-max=30s") {
		t.Errorf("node provisioner args %q: no --retry-interval-max=30s", args)
	}
	snap := render(t, "sidecars: {snapshotter: {enabled: true}}\n")["DaemonSet/berth-node"].args("csi-snapshotter")
	if !slices.Contains(snap, "--retry-interval-max=30s") {
		t.Errorf("node snapshotter args %q: no --retry-interval-max=30s", snap)
	}
	// The class names the embedded pool, so adding pools later changes no class.
	if sc := objs["StorageClass/berth"]; sc.VolumeBindingMode != "WaitForFirstConsumer" || sc.Parameters["pool"] != "default" {
		t.Errorf("StorageClass berth: pool %q binding %s, want pool \"default\" binding WaitForFirstConsumer",
			sc.Parameters["pool"], sc.VolumeBindingMode)
	}
}

const sharedValues = `
pools:
- name: local
  path: /var/lib/berth/local
  kind: dir
- name: gluster
  path: /var/lib/berth/gluster
  kind: shared
  source: 10.0.0.5:/gv0
  fsType: glusterfs
adoptRoots: [/srv/adopt]
storageClasses:
- name: berth
  allowVolumeExpansion: true
- name: berth-gluster
  pool: gluster
  allowVolumeExpansion: true
`

func TestSharedPoolRendersController(t *testing.T) {
	objs := render(t, sharedValues)
	dep, ok := objs["Deployment/berth-controller"]
	if !ok {
		t.Fatal("no controller Deployment rendered with a shared pool")
	}
	for _, key := range []string{"ServiceAccount/berth-controller", "ClusterRole/berth-controller", "Role/berth-controller"} {
		if _, ok := objs[key]; !ok {
			t.Errorf("%s not rendered", key)
		}
	}

	driver := dep.args("berth")
	for _, want := range []string{"--mode=controller", "--config=/etc/berth/controller.yaml", "--registration=off"} {
		if !slices.Contains(driver, want) {
			t.Errorf("driver args %q lack %s", driver, want)
		}
	}
	// The driver's own reading: strict keys, then validation.
	var cfg storage.Config
	if err := yaml.UnmarshalStrict([]byte(objs["ConfigMap/berth-pools"].Data["controller.yaml"]), &cfg); err != nil {
		t.Fatalf("controller.yaml: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("controller.yaml: %v", err)
	}
	if len(cfg.Pools) != 1 || cfg.Pools[0].Name != "gluster" || cfg.Pools[0].Kind != "shared" || cfg.AdoptRoots != nil {
		t.Errorf("controller configuration %+v, want the gluster pool alone", cfg)
	}

	central := dep.args("csi-provisioner")
	for _, want := range []string{"--leader-election=true", "--immediate-topology=false"} {
		if !slices.Contains(central, want) {
			t.Errorf("central provisioner args %q lack %s", central, want)
		}
	}
	for _, arg := range central {
		if strings.HasPrefix(arg, "--node-deployment") || strings.HasPrefix(arg, "--enable-capacity") {
			t.Errorf("central provisioner runs with %s, want its ordinary mode without capacity", arg)
		}
	}
	node := objs["DaemonSet/berth-node"].args("csi-provisioner")
	for _, want := range []string{"--node-deployment=true", "--node-deployment-immediate-binding=false"} {
		if !slices.Contains(node, want) {
			t.Errorf("node provisioner args %q lack %s", node, want)
		}
	}

	for _, tc := range []struct{ class, pool, binding string }{
		{"berth", "local", "WaitForFirstConsumer"},
		{"berth-gluster", "gluster", "Immediate"},
	} {
		sc := objs["StorageClass/"+tc.class]
		if sc.Parameters["pool"] != tc.pool || sc.VolumeBindingMode != tc.binding {
			t.Errorf("StorageClass %s: pool %q binding %s, want pool %q binding %s",
				tc.class, sc.Parameters["pool"], sc.VolumeBindingMode, tc.pool, tc.binding)
		}
	}
}

// TestAdoptRootsBothForms: adoptRoots entries may be plain paths or {path,
// allowCrossMounts}; the node's configuration carries them as given and the
// DaemonSet mounts each root's path at the same path.
func TestAdoptRootsBothForms(t *testing.T) {
	objs := render(t, "adoptRoots:\n- /srv/adopt\n- {path: /mnt/data, allowCrossMounts: true}\n")
	var cfg storage.Config
	if err := yaml.UnmarshalStrict([]byte(objs["ConfigMap/berth-pools"].Data["pools.yaml"]), &cfg); err != nil {
		t.Fatalf("pools.yaml: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("pools.yaml: %v", err)
	}
	want := []storage.AdoptRoot{{Path: "/srv/adopt"}, {Path: "/mnt/data", AllowCrossMounts: true}}
	if !slices.Equal(cfg.AdoptRoots, want) {
		t.Errorf("node configuration adoptRoots %+v, want %+v", cfg.AdoptRoots, want)
	}
	ds, ok := objs["DaemonSet/berth-node"]
	if !ok {
		t.Fatal("no node DaemonSet rendered")
	}
	hostPaths := map[string]string{}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	for i, r := range want {
		name := "adopt-" + strconv.Itoa(i)
		if hostPaths[name] != r.Path {
			t.Errorf("volume %s has host path %q, want %q", name, hostPaths[name], r.Path)
		}
		found := false
		for _, c := range ds.Spec.Template.Spec.Containers {
			for _, m := range c.VolumeMounts {
				found = found || c.Name == "berth" && m.Name == name && m.MountPath == r.Path
			}
		}
		if !found {
			t.Errorf("driver container does not mount %s at %s", name, r.Path)
		}
	}
}

// With adopt roots and no pools, the chart writes the embedded default pool into
// its ConfigMap: of kind auto, as the driver's own default, so that sizes are
// enforced where the node's filesystem allows it (README, "Sizes enforced by the
// default pool"), and the chart accepts kind auto for configured pools.
func TestDefaultPoolInConfigMapIsAuto(t *testing.T) {
	objs := render(t, "adoptRoots: [/srv/adopt]\n")
	var cfg storage.Config
	if err := yaml.UnmarshalStrict([]byte(objs["ConfigMap/berth-pools"].Data["pools.yaml"]), &cfg); err != nil {
		t.Fatalf("pools.yaml: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("pools.yaml: %v", err)
	}
	def := storage.DefaultConfig().Pools[0]
	if len(cfg.Pools) != 1 || !reflect.DeepEqual(cfg.Pools[0], def) {
		t.Errorf("pools.yaml pools %+v, want the driver's default %+v", cfg.Pools, def)
	}
	render(t, "pools:\n- name: local\n  path: /var/lib/berth/local\n  kind: auto\n")
}

// TestMetricsAddress: metrics are on by default, each driver container listening
// on its pod's IP (the node's address on the host network) with a named port, the
// node plugin and the controller on different ports; metrics.enabled=false
// removes the flag and the port.
func TestMetricsAddress(t *testing.T) {
	objs := render(t, sharedValues)
	for _, tc := range []struct{ key, port string }{
		{"DaemonSet/berth-node", "9811"},
		{"Deployment/berth-controller", "9812"},
	} {
		o := objs[tc.key]
		c := o.container("berth")
		if want := "--metrics-address=[$(POD_IP)]:" + tc.port; !slices.Contains(c.Args, want) {
			t.Errorf("%s driver args %q lack %s", tc.key, c.Args, want)
		}
		if !slices.ContainsFunc(c.Env, func(e envVar) bool {
			return e.Name == "POD_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP"
		}) {
			t.Errorf("%s driver env %+v lacks POD_IP from status.podIP", tc.key, c.Env)
		}
		if !slices.ContainsFunc(c.Ports, func(p port) bool { return p.Name == "metrics" && strconv.Itoa(p.ContainerPort) == tc.port }) {
			t.Errorf("%s driver ports %+v lack metrics %s", tc.key, c.Ports, tc.port)
		}
	}
	off := render(t, sharedValues+"metrics:\n  enabled: false\n")
	for _, key := range []string{"DaemonSet/berth-node", "Deployment/berth-controller"} {
		c := off[key].container("berth")
		if slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--metrics-address") }) ||
			slices.ContainsFunc(c.Ports, func(p port) bool { return p.Name == "metrics" }) {
			t.Errorf("%s with metrics disabled: args %q ports %+v", key, c.Args, c.Ports)
		}
	}
}
