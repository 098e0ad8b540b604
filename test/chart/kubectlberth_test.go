package chart

import "testing"

// TestKubectlBerthRBAC: the plugin's roles are off by default; on, they grant what
// kubectl berth reads (PVs, pods, snapshot contents; pods/proxy in the release
// namespace) and pods/exec only with allowFix; subjects get both bindings.
func TestKubectlBerthRBAC(t *testing.T) {
	if objs := render(t, ""); len(objs["ClusterRole/berth-kubectl-berth"].Rules) != 0 || len(objs["Role/berth-kubectl-berth"].Rules) != 0 {
		t.Error("kubectl berth roles rendered with the default values")
	}
	for _, tc := range []struct {
		name, values string
		exec, bound  bool
	}{
		{"read only", "kubectlBerth: {rbac: {create: true}}\n", false, false},
		{"with fix and subjects", "kubectlBerth: {rbac: {create: true, allowFix: true, subjects: [{kind: Group, name: storage-admins, apiGroup: rbac.authorization.k8s.io}]}}\n", true, true},
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
					if v != "get" && v != "list" && !(v == "create" && r.Resources[0] == "pods/exec") {
						t.Errorf("rule %+v grants %s", r, v)
					}
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
