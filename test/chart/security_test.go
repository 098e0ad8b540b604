package chart

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
	"sigs.k8s.io/yaml"
)

// apiAccessPath is where client-go looks for the service account's credentials.
const apiAccessPath = "/var/run/secrets/kubernetes.io/serviceaccount"

// grants reports whether any rule grants verb on resource of group.
func grants(rules []rule, group, resource, verb string) bool {
	for _, r := range rules {
		if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
			return true
		}
	}
	return false
}

// mounts reports whether container c of the pod mounts something at path.
func (p podSpec) mounts(c, path string) bool {
	for _, ct := range p.Containers {
		if ct.Name == c {
			return slices.ContainsFunc(ct.VolumeMounts, func(m volumeMount) bool { return m.MountPath == path })
		}
	}
	return false
}

// TestNodeRBACIsWhatTheSidecarsUse: the node's roles grant what the enabled sidecars
// of their pinned versions call (their repositories' deploy/kubernetes/rbac*.yaml)
// and nothing more: no PV update, no snapshot content creation or deletion, group
// snapshot contents updated only when group snapshots are on, and nothing of a
// sidecar that is turned off. The pv-lister's rules (TestOrphanScan,
// TestPVListerRuns) lie within the provisioner's: with the transfer channel on, as
// in every case here, it lists PersistentVolumes and VolumeSnapshotContents and
// gets Nodes, and none of its rules grants more.
func TestNodeRBACIsWhatTheSidecarsUse(t *testing.T) {
	type grant struct{ group, resource, verb string }
	never := []grant{
		{"", "persistentvolumes", "update"},
		{"", "persistentvolumeclaims", "patch"},
		{"", "secrets", "get"},
		{"storage.k8s.io", "volumeattachments", "get"},
		{"storage.k8s.io", "csistoragecapacities", "create"}, // namespaced: the Role's
		{"snapshot.storage.k8s.io", "volumesnapshotcontents", "create"},
		{"snapshot.storage.k8s.io", "volumesnapshotcontents", "delete"},
		{"snapshot.storage.k8s.io", "volumegroupsnapshotcontents", "create"},
		{"groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents", "create"},
		{"groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents", "delete"},
		{"groupsnapshot.storage.k8s.io", "volumegroupsnapshots", "get"},
	}
	provisioner := []grant{
		{"", "persistentvolumes", "create"}, {"", "persistentvolumes", "delete"}, {"", "persistentvolumes", "patch"},
		{"", "persistentvolumeclaims", "update"}, {"", "events", "create"}, {"", "nodes", "get"},
		{"storage.k8s.io", "storageclasses", "watch"}, {"storage.k8s.io", "csinodes", "watch"},
		{"snapshot.storage.k8s.io", "volumesnapshots", "update"}, {"snapshot.storage.k8s.io", "volumesnapshotcontents", "get"},
	}
	pvLister := []grant{
		{"", "persistentvolumes", "list"}, {"", "nodes", "get"}, {"snapshot.storage.k8s.io", "volumesnapshotcontents", "list"},
	}
	resizer := []grant{{"", "persistentvolumeclaims/status", "patch"}, {"", "pods", "watch"}}
	snapshotter := []grant{
		{"snapshot.storage.k8s.io", "volumesnapshotclasses", "watch"},
		{"snapshot.storage.k8s.io", "volumesnapshotcontents", "update"},
		{"snapshot.storage.k8s.io", "volumesnapshotcontents/status", "patch"},
	}
	groups := []grant{
		{"groupsnapshot.storage.k8s.io", "volumegroupsnapshotclasses", "watch"},
		{"groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents", "update"},
		{"groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents/status", "patch"},
	}
	for _, tc := range []struct {
		name                         string
		values                       string
		resizer, snapshotter, groups bool
	}{
		{"defaults: resizer on, snapshotter off", "", true, false, false},
		{"all sidecars", "sidecars: {snapshotter: {enabled: true}}\n", true, true, false},
		{"group snapshots", "sidecars: {snapshotter: {enabled: true, groupSnapshots: true}}\n", true, true, true},
		{"group snapshots without the snapshotter", "sidecars: {snapshotter: {groupSnapshots: true}}\n", true, false, false},
		{"provisioner alone", "sidecars: {resizer: {enabled: false}}\n", false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := render(t, tc.values)
			cluster, ns := objs["ClusterRole/berth-node"].Rules, objs["Role/berth-node"].Rules
			check := func(rules []rule, gs []grant, want bool) {
				t.Helper()
				for _, g := range gs {
					if got := grants(rules, g.group, g.resource, g.verb); got != want {
						t.Errorf("%s %s/%s granted: %v, want %v", g.verb, g.group, g.resource, got, want)
					}
				}
			}
			check(cluster, never, false)
			check(cluster, provisioner, true)
			check(cluster, pvLister, true)
			check(cluster, resizer, tc.resizer)
			check(cluster, snapshotter, tc.snapshotter)
			check(cluster, groups, tc.groups)
			check(ns, []grant{{"storage.k8s.io", "csistoragecapacities", "create"}, {"", "pods", "get"}}, true)
			check(ns, []grant{{"apps", "daemonsets", "get"}, {"apps", "replicasets", "get"}}, false)
			check(ns, []grant{{"coordination.k8s.io", "leases", "update"}}, tc.resizer)
		})
	}
}

// TestPrivilegedContainersHoldNoToken: the pods mount no service-account token by
// default; only the sidecars that call the API get one (the orphan scan's
// pv-lister among them), never the privileged driver or the registrar.
func TestPrivilegedContainersHoldNoToken(t *testing.T) {
	objs := render(t, sharedValues+"sidecars: {snapshotter: {enabled: true}}\nregistration: {mode: sidecar}\n")
	for _, tc := range []struct {
		object       string
		withToken    []string
		withoutToken []string
	}{
		{"DaemonSet/berth-node", []string{"csi-provisioner", "csi-resizer", "csi-snapshotter", "pv-lister"}, []string{"berth", "node-driver-registrar"}},
		{"Deployment/berth-controller", []string{"csi-provisioner"}, []string{"berth"}},
	} {
		pod := objs[tc.object].Spec.Template.Spec
		if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
			t.Errorf("%s: automountServiceAccountToken is not false", tc.object)
		}
		for _, c := range tc.withToken {
			if !pod.mounts(c, apiAccessPath) {
				t.Errorf("%s: %s calls the API but has no credentials at %s", tc.object, c, apiAccessPath)
			}
		}
		for _, c := range tc.withoutToken {
			if pod.mounts(c, apiAccessPath) {
				t.Errorf("%s: %s never calls the API but mounts a token", tc.object, c)
			}
		}
		var sources []string
		for _, v := range pod.Volumes {
			if v.Name == "api-access" && v.Projected != nil {
				for _, src := range v.Projected.Sources {
					for k := range src {
						sources = append(sources, k)
					}
				}
			}
		}
		slices.Sort(sources)
		if want := []string{"configMap", "downwardAPI", "serviceAccountToken"}; !slices.Equal(sources, want) {
			t.Errorf("%s: api-access projects %v, want %v (as the kubelet's default)", tc.object, sources, want)
		}
	}
}

// TestEphemeralMode: ephemeral.enabled=false takes Ephemeral out of the CSIDriver, so
// the kubelet refuses inline Berth volumes before they reach a node.
func TestEphemeralMode(t *testing.T) {
	if modes := render(t, "")["CSIDriver/berth.csi.io"].Spec.VolumeLifecycleModes; !slices.Contains(modes, "Ephemeral") {
		t.Errorf("default volumeLifecycleModes %v lack Ephemeral", modes)
	}
	if modes := render(t, "ephemeral: {enabled: false}\n")["CSIDriver/berth.csi.io"].Spec.VolumeLifecycleModes; !slices.Equal(modes, []string{"Persistent"}) {
		t.Errorf("ephemeral.enabled=false: volumeLifecycleModes %v, want [Persistent]", modes)
	}
	// A configuration written for adopt roots alone keeps the embedded pool's policy:
	// the default pool takes inline volumes.
	data := render(t, "adoptRoots: [/srv/adopt]\n")["ConfigMap/berth-pools"].Data["pools.yaml"]
	var cfg storage.Config
	if err := yaml.UnmarshalStrict([]byte(data), &cfg); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if want := storage.DefaultConfig().Pools; !reflect.DeepEqual(cfg.Pools, want) {
		t.Errorf("pools.yaml without pools: %+v, want the embedded default %+v", cfg.Pools, want)
	}
}

// TestMountSecrets: the Secrets for credential files reach the driver containers that
// mount shared pools, read-only, and no other container.
func TestMountSecrets(t *testing.T) {
	objs := render(t, strings.Replace(sharedValues, "adoptRoots:", "mountSecrets: [ceph-berth]\nadoptRoots:", 1))
	for _, name := range []string{"DaemonSet/berth-node", "Deployment/berth-controller"} {
		pod := objs[name].Spec.Template.Spec
		if !pod.mounts("berth", "/etc/berth/secrets/ceph-berth") {
			t.Errorf("%s: driver lacks /etc/berth/secrets/ceph-berth", name)
		}
		if pod.mounts("csi-provisioner", "/etc/berth/secrets/ceph-berth") {
			t.Errorf("%s: the provisioner mounts the credentials", name)
		}
		if !slices.ContainsFunc(pod.Volumes, func(v volume) bool { return v.Secret != nil && v.Secret.SecretName == "ceph-berth" }) {
			t.Errorf("%s: no volume of Secret ceph-berth", name)
		}
	}
}

// TestMountOptionCredentialsRefused: the chart refuses a credential in a pool's
// mountOptions before the driver would.
func TestMountOptionCredentialsRefused(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin, kube := helm(t, root)
	for _, opt := range []string{"secret=AQDx==", "Password=x", "passwd=x", "token=x"} {
		values := filepath.Join(t.TempDir(), "values.yaml")
		pools := "pools:\n- {name: c, path: /mnt/c, kind: shared, source: 'm:/', fsType: ceph, mountOptions: ['" + opt + "']}\n"
		if err := os.WriteFile(values, []byte(pools), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "template", "berth", filepath.Join(root, "charts", "berth"), "--kube-version", kube, "-f", values).CombinedOutput()
		if err == nil {
			t.Errorf("mountOptions [%s] rendered", opt)
		} else if !strings.Contains(string(out), "mountOptions") {
			t.Errorf("mountOptions [%s]: %s", opt, out)
		}
	}
}

// TestGroupSnapshotsMountHostCgroups: with per-pod I/O limits on (the default) or
// group snapshots on (and the snapshotter), and only then, the driver gets the
// host's cgroups and is told where they are: it writes the pods' I/O limits there,
// and pauses the pods that write directory volumes for a group's instant.
func TestGroupSnapshotsMountHostCgroups(t *testing.T) {
	const noIO = "ioLimits: {enabled: false}\n"
	for _, tc := range []struct {
		name   string
		values string
		want   bool
	}{
		{"defaults", "", true},
		{"I/O limits off", noIO, false},
		{"snapshotter alone", noIO + "sidecars: {snapshotter: {enabled: true}}\n", false},
		{"group snapshots", noIO + "sidecars: {snapshotter: {enabled: true, groupSnapshots: true}}\n", true},
		{"group snapshots without the snapshotter", noIO + "sidecars: {snapshotter: {groupSnapshots: true}}\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds := render(t, tc.values)["DaemonSet/berth-node"]
			hostCgroup := slices.ContainsFunc(ds.Spec.Template.Spec.Volumes, func(v volume) bool {
				return v.HostPath != nil && v.HostPath.Path == "/sys/fs/cgroup"
			})
			mounted := ds.Spec.Template.Spec.mounts("berth", "/host/sys/fs/cgroup")
			flag := slices.Contains(ds.args("berth"), "--cgroup-root=/host/sys/fs/cgroup")
			if hostCgroup != tc.want || mounted != tc.want || flag != tc.want {
				t.Errorf("host cgroups: volume %v, mounted %v, --cgroup-root %v; want all %v", hostCgroup, mounted, flag, tc.want)
			}
		})
	}
}
