package chart

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/berth-csi/berth/pkg/driver"
)

// TestPVListerRuns: the pv-lister container runs, with its socket's directory shared
// with the driver and the driver told its socket, when the orphan scan is on or the
// transfer channel is (its copies ask it where a source lives), and only then. The
// transfer channel's rules of its own are there with the channel alone: get nodes,
// list volumesnapshotcontents, each alone in its rule; list persistentvolumes with
// either. They grant nothing the node's ServiceAccount lacks without them.
func TestPVListerRuns(t *testing.T) {
	endpoint := "--pv-lister-endpoint=" + driver.DefaultPVListerEndpoint
	only := func(rules []rule, group, resource, verb string) bool {
		return slices.ContainsFunc(rules, func(r rule) bool {
			return slices.Equal(r.APIGroups, []string{group}) && slices.Equal(r.Resources, []string{resource}) && slices.Equal(r.Verbs, []string{verb})
		})
	}
	for _, tc := range []struct {
		name           string
		values         string
		scan, transfer bool
	}{
		{"defaults: scan and transfer", "", true, true},
		{"transfer alone", "orphanScan: {interval: \"0\"}\n", false, true},
		{"scan alone", "transfer: {enabled: false}\n", true, false},
		{"neither", "orphanScan: {interval: \"\"}\ntransfer: {enabled: false}\n", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := render(t, sharedValues+tc.values)
			ds := objs["DaemonSet/berth-node"]
			pod := ds.Spec.Template.Spec
			runs := tc.scan || tc.transfer
			args := ds.args("berth")
			if got := slices.Contains(args, endpoint); got != runs {
				t.Errorf("driver args %q: %s given: %v, want %v", args, endpoint, got, runs)
			}
			if got := slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--orphan-scan-interval=") }); got != tc.scan {
				t.Errorf("driver args %q: --orphan-scan-interval given: %v, want %v", args, got, tc.scan)
			}
			lister := ds.container("pv-lister")
			if got := lister.Name != ""; got != runs {
				t.Fatalf("pv-lister container rendered: %v, want %v", got, runs)
			}
			for _, c := range []string{"berth", "pv-lister"} {
				if got := pod.mounts(c, "/pv-lister"); got != runs {
					t.Errorf("%s mounts /pv-lister: %v, want %v", c, got, runs)
				}
			}
			if got := slices.ContainsFunc(pod.Volumes, func(v volume) bool { return v.Name == "pv-lister" && v.EmptyDir != nil }); got != runs {
				t.Errorf("emptyDir pv-lister: %v, want %v", got, runs)
			}
			if runs {
				if lister.Args[0] != "pv-lister" || !slices.Contains(lister.Args, "--endpoint="+driver.DefaultPVListerEndpoint) {
					t.Errorf("pv-lister args %q", lister.Args)
				}
				if sc := lister.SecurityContext; sc == nil || sc.Privileged || !sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65534 {
					t.Errorf("pv-lister security context %+v, want unprivileged, as 65534", sc)
				}
				if !pod.mounts("pv-lister", apiAccessPath) {
					t.Error("the pv-lister has no API credentials")
				}
			}

			rules := objs["ClusterRole/berth-node"].Rules
			for _, g := range []struct {
				group, resource, verb string
				want                  bool
			}{
				{"", "persistentvolumes", "list", runs},
				{"", "nodes", "get", tc.transfer},
				{"snapshot.storage.k8s.io", "volumesnapshotcontents", "list", tc.transfer},
			} {
				if got := only(rules, g.group, g.resource, g.verb); got != g.want {
					t.Errorf("a rule of %s %s/%s alone: %v, want %v", g.verb, g.group, g.resource, got, g.want)
				}
			}
			if c := objs["Deployment/berth-controller"].container("pv-lister"); c.Name != "" {
				t.Error("the controller runs a pv-lister")
			}
			if only(objs["ClusterRole/berth-controller"].Rules, "", "nodes", "get") {
				t.Error("the controller's ClusterRole has the pv-lister's rule")
			}
		})
	}

	// The rules of the pv-lister add no right: the same grants with and without them.
	with := grantSet(render(t, "")["ClusterRole/berth-node"].Rules)
	without := grantSet(render(t, "orphanScan: {interval: \"0\"}\ntransfer: {enabled: false}\n")["ClusterRole/berth-node"].Rules)
	if !maps.Equal(with, without) {
		for g := range with {
			if !without[g] {
				t.Errorf("the pv-lister's rules grant %s, which nothing else does", g)
			}
		}
	}
}

// grantSet is every verb/group/resource the rules grant.
func grantSet(rules []rule) map[string]bool {
	out := map[string]bool{}
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					out[v+" "+g+"/"+res] = true
				}
			}
		}
	}
	return out
}
