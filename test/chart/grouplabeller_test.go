package chart

import (
	"slices"
	"testing"
)

// TestGroupLabeller: with group snapshots on (and the snapshotter), each node pod
// runs the group-labeller (the driver's binary, `group-labeller`) for its own node,
// as nobody, with the API token and nothing else mounted, and the node's role
// grants what it calls; with group snapshots off there is no labeller.
func TestGroupLabeller(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values string
		want   bool
	}{
		{"defaults", "", false},
		{"snapshotter without group snapshots", "sidecars: {snapshotter: {enabled: true}}\n", false},
		{"group snapshots without the snapshotter", "sidecars: {snapshotter: {groupSnapshots: true}}\n", false},
		{"group snapshots", "sidecars: {snapshotter: {enabled: true, groupSnapshots: true}}\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := render(t, tc.values)
			ds := objs["DaemonSet/berth-node"]
			c := ds.container("group-labeller")
			if got := c.Name != ""; got != tc.want {
				t.Fatalf("group-labeller container: %v, want %v", got, tc.want)
			}
			if !tc.want {
				return
			}
			if len(c.Args) == 0 || c.Args[0] != "group-labeller" || !slices.Contains(c.Args, "--node-name=$(NODE_NAME)") ||
				!slices.Contains(c.Args, "--driver-name=berth.csi.io") {
				t.Errorf("args %q", c.Args)
			}
			if !slices.ContainsFunc(c.Env, func(e envVar) bool {
				return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
			}) {
				t.Errorf("env %+v: no NODE_NAME from spec.nodeName", c.Env)
			}
			if sc := c.SecurityContext; sc == nil || sc.Privileged || !sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65534 {
				t.Errorf("securityContext %+v, want unprivileged, as 65534", sc)
			}
			if len(c.VolumeMounts) != 1 || c.VolumeMounts[0].MountPath != apiAccessPath {
				t.Errorf("mounts %+v, want the API token alone", c.VolumeMounts)
			}
			rules := objs["ClusterRole/berth-node"].Rules
			for _, g := range []struct{ group, resource, verb string }{
				{"groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents", "list"},
				{"groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents", "watch"},
				{"groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents", "patch"},
				{"snapshot.storage.k8s.io", "volumesnapshotcontents", "watch"},
				{"snapshot.storage.k8s.io", "volumesnapshotcontents", "patch"},
				{"", "persistentvolumes", "list"},
				{"", "events", "create"},
			} {
				if !grants(rules, g.group, g.resource, g.verb) {
					t.Errorf("%s %s/%s not granted", g.verb, g.group, g.resource)
				}
			}
		})
	}
}
