package chart

import (
	"slices"
	"strings"
	"testing"
)

// TestOrphanScan: by default the node plugin scans for orphans every 5m, asking the
// pv-lister container, which runs unprivileged as nobody with the API token and
// shares only its socket's directory with the driver; the node's ServiceAccount may
// list PersistentVolumes for it. An empty or "0" interval removes the flag, and,
// with the transfer channel off too, the container, its volume and that rule
// (TestPVListerRuns: the channel alone runs them). The controller of shared pools
// does not scan: the node plugins count the shared pools they serve.
func TestOrphanScan(t *testing.T) {
	const endpoint = "--pv-lister-endpoint=unix:///pv-lister/pv-lister.sock"
	listOnly := func(rules []rule) bool {
		return slices.ContainsFunc(rules, func(r rule) bool {
			return slices.Equal(r.APIGroups, []string{""}) && slices.Equal(r.Resources, []string{"persistentvolumes"}) && slices.Equal(r.Verbs, []string{"list"})
		})
	}
	objs := render(t, sharedValues+"driverName: berth.example.com\n")
	ds := objs["DaemonSet/berth-node"]
	driver := ds.container("berth")
	for _, want := range []string{"--orphan-scan-interval=5m", endpoint} {
		if !slices.Contains(driver.Args, want) {
			t.Errorf("driver args %q lack %s", driver.Args, want)
		}
	}
	lister := ds.container("pv-lister")
	for _, want := range []string{"pv-lister", "--endpoint=unix:///pv-lister/pv-lister.sock", "--driver-name=berth.example.com", "--page-size=500"} {
		if !slices.Contains(lister.Args, want) {
			t.Errorf("pv-lister args %q lack %s", lister.Args, want)
		}
	}
	if lister.Args[0] != "pv-lister" {
		t.Errorf("pv-lister args %q: the subcommand must come first", lister.Args)
	}
	if sc := lister.SecurityContext; sc == nil || sc.Privileged || !sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65534 {
		t.Errorf("pv-lister security context %+v, want unprivileged, as 65534", sc)
	}
	for _, c := range []string{"berth", "pv-lister"} {
		if !ds.Spec.Template.Spec.mounts(c, "/pv-lister") {
			t.Errorf("%s does not mount the pv-lister's socket directory", c)
		}
	}
	if !slices.ContainsFunc(ds.Spec.Template.Spec.Volumes, func(v volume) bool { return v.Name == "pv-lister" && v.EmptyDir != nil }) {
		t.Error("no emptyDir volume pv-lister")
	}
	if !listOnly(objs["ClusterRole/berth-node"].Rules) {
		t.Error("the node's ClusterRole has no rule listing PersistentVolumes for the pv-lister")
	}
	if listOnly(objs["ClusterRole/berth-controller"].Rules) {
		t.Error("the controller's ClusterRole has the pv-lister's rule")
	}
	for _, c := range objs["Deployment/berth-controller"].Spec.Template.Spec.Containers {
		if c.Name == "pv-lister" || slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--orphan-scan") }) {
			t.Errorf("the controller scans: container %s args %q", c.Name, c.Args)
		}
	}

	for _, off := range []string{`""`, `"0"`, `0`} {
		objs := render(t, "orphanScan: {interval: "+off+"}\ntransfer: {enabled: false}\n")
		ds := objs["DaemonSet/berth-node"]
		if args := ds.args("berth"); slices.ContainsFunc(args, func(a string) bool {
			return strings.HasPrefix(a, "--orphan-scan") || strings.HasPrefix(a, "--pv-lister")
		}) {
			t.Errorf("interval %s: driver args %q", off, args)
		}
		if ds.container("pv-lister").Name != "" || ds.Spec.Template.Spec.mounts("berth", "/pv-lister") ||
			slices.ContainsFunc(ds.Spec.Template.Spec.Volumes, func(v volume) bool { return v.Name == "pv-lister" }) {
			t.Errorf("interval %s: the pv-lister container, mount or volume is rendered", off)
		}
		if listOnly(objs["ClusterRole/berth-node"].Rules) {
			t.Errorf("interval %s: the pv-lister's rule is rendered", off)
		}
	}
}
