package chart

import "testing"

// TestKubectlBerthRBAC: the plugin's roles are off by default; on, they grant what
// kubectl berth reads (PVs, pods, snapshot contents; pods/proxy in the release
// namespace), pods/exec only with allowFix, what recover changes only with
// allowRecover, what move and evacuate call only with allowMove; subjects get both
// bindings.
func TestKubectlBerthRBAC(t *testing.T) {
	recoverRules := []rule{
		{APIGroups: []string{""}, Resources: []string{"persistentvolumeclaims"}, Verbs: []string{"create"}},
		{APIGroups: []string{""}, Resources: []string{"persistentvolumeclaims"}, Verbs: []string{"delete"}},
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"delete"}},
		{APIGroups: []string{""}, Resources: []string{"persistentvolumes"}, Verbs: []string{"patch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}},
		{APIGroups: []string{"snapshot.storage.k8s.io"}, Resources: []string{"volumesnapshots"}, Verbs: []string{"list"}},
		{APIGroups: []string{"snapshot.storage.k8s.io"}, Resources: []string{"volumesnapshotclasses"}, Verbs: []string{"get"}},
	}
	moveRules := []rule{
		{APIGroups: []string{"berth.csi.io"}, Resources: []string{"volumemoves"}, Verbs: []string{"create"}},
		{APIGroups: []string{"berth.csi.io"}, Resources: []string{"volumemoves"}, Verbs: []string{"delete"}},
		{APIGroups: []string{"berth.csi.io"}, Resources: []string{"volumemoves"}, Verbs: []string{"watch"}},
		{APIGroups: []string{"storage.k8s.io"}, Resources: []string{"csistoragecapacities"}, Verbs: []string{"list"}},
		{APIGroups: []string{"storage.k8s.io"}, Resources: []string{"csinodes"}, Verbs: []string{"list"}},
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"list"}},
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}},
	}
	if objs := render(t, ""); len(objs["ClusterRole/berth-kubectl-berth"].Rules) != 0 || len(objs["Role/berth-kubectl-berth"].Rules) != 0 {
		t.Error("kubectl berth roles rendered with the default values")
	}
	for _, tc := range []struct {
		name, values  string
		exec, bound   bool
		recover, move bool
	}{
		{"read only", "kubectlBerth: {rbac: {create: true}}\n", false, false, false, false},
		{"with fix and subjects", "kubectlBerth: {rbac: {create: true, allowFix: true, subjects: [{kind: Group, name: storage-admins, apiGroup: rbac.authorization.k8s.io}]}}\n", true, true, false, false},
		{"with recover", "kubectlBerth: {rbac: {create: true, allowRecover: true}}\n", false, false, true, false},
		{"with move", "kubectlBerth: {rbac: {create: true, allowMove: true}}\n", false, false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := render(t, tc.values)
			cluster, ns := objs["ClusterRole/berth-kubectl-berth"].Rules, objs["Role/berth-kubectl-berth"].Rules
			for _, g := range []struct {
				rules                 []rule
				group, resource, verb string
			}{
				{cluster, "", "persistentvolumes", "list"},
				{cluster, "", "pods", "list"},
				{cluster, "snapshot.storage.k8s.io", "volumesnapshotcontents", "list"},
				{ns, "", "pods", "get"},
				{ns, "", "pods/proxy", "get"},
			} {
				if !grants(g.rules, g.group, g.resource, g.verb) {
					t.Errorf("no %s on %s", g.verb, g.resource)
				}
			}
			if grants(ns, "", "pods/exec", "create") != tc.exec || grants(cluster, "", "pods/exec", "create") {
				t.Errorf("pods/exec create granted: %v in the namespace, want %v, and never cluster-wide", grants(ns, "", "pods/exec", "create"), tc.exec)
			}
			for _, r := range append(append([]rule{}, cluster...), ns...) {
				for _, v := range r.Verbs {
					if v != "get" && v != "list" && !(v == "create" && r.Resources[0] == "pods/exec") && !grants(recoverRules, r.APIGroups[0], r.Resources[0], v) &&
						!grants(moveRules, r.APIGroups[0], r.Resources[0], v) {
						t.Errorf("rule %+v grants %s", r, v)
					}
				}
			}
			for _, g := range recoverRules {
				if tc.move && grants(moveRules, g.APIGroups[0], g.Resources[0], g.Verbs[0]) {
					continue
				}
				if grants(cluster, g.APIGroups[0], g.Resources[0], g.Verbs[0]) != tc.recover {
					t.Errorf("%s on %s granted: %v, want %v", g.Verbs[0], g.Resources[0], !tc.recover, tc.recover)
				}
			}
			for _, g := range moveRules {
				if tc.recover && grants(recoverRules, g.APIGroups[0], g.Resources[0], g.Verbs[0]) {
					continue
				}
				if grants(cluster, g.APIGroups[0], g.Resources[0], g.Verbs[0]) != tc.move {
					t.Errorf("%s on %s granted: %v, want %v", g.Verbs[0], g.Resources[0], !tc.move, tc.move)
				}
			}
			_, crb := objs["ClusterRoleBinding/berth-kubectl-berth"]
			_, rb := objs["RoleBinding/berth-kubectl-berth"]
			if crb != tc.bound || rb != tc.bound {
				t.Errorf("bindings rendered: %v %v, want %v", crb, rb, tc.bound)
			}
		})
	}
}
