package chart

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/berth-csi/berth/pkg/mover"
	"sigs.k8s.io/yaml"
)

// TestMover: by default (the transfer channel on) the chart runs the mover, the
// driver's binary as `csi-driver mover`, as nobody, with the API token and nothing
// else, and installs the VolumeMove CRD; its ClusterRole grants what a move changes
// (VolumeMoves and their status, claims, PVs, the scale of StatefulSets and
// Deployments, the read-back pod) and never changes a pod. Without the channel, or with
// mover.enabled false, neither the mover nor the CRD is rendered.
func TestMover(t *testing.T) {
	for _, tc := range []struct {
		name, values string
		want         bool
	}{
		{"defaults", "", true},
		{"mover off", "mover: {enabled: false}\n", false},
		{"transfer off", "transfer: {enabled: false}\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := render(t, tc.values)
			d, ok := objs["Deployment/berth-mover"]
			_, crd := objs["CustomResourceDefinition/volumemoves.berth.csi.io"]
			if ok != tc.want || crd != tc.want {
				t.Fatalf("mover Deployment rendered: %v, CRD: %v; want %v", ok, crd, tc.want)
			}
			if !tc.want {
				return
			}
			c := d.container("mover")
			if len(c.Args) == 0 || c.Args[0] != "mover" || !slices.Contains(c.Args, "--driver-name=berth.csi.io") ||
				!slices.Contains(c.Args, "--image=ghcr.io/berth-csi/berth:0.1.0") {
				t.Errorf("args %q", c.Args)
			}
			if sc := c.SecurityContext; sc == nil || sc.Privileged || !sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65534 {
				t.Errorf("securityContext %+v, want unprivileged, as 65534", sc)
			}
			if len(c.VolumeMounts) != 1 || c.VolumeMounts[0].MountPath != apiAccessPath {
				t.Errorf("mounts %+v, want the API token alone", c.VolumeMounts)
			}
			if a := d.Spec.Template.Spec.AutomountServiceAccountToken; a == nil || *a {
				t.Error("the pod automounts a service-account token")
			}
			rules := objs["ClusterRole/berth-mover"].Rules
			for _, g := range []struct{ group, resource, verb string }{
				{"berth.csi.io", "volumemoves", "watch"},
				{"berth.csi.io", "volumemoves/status", "update"},
				{"", "persistentvolumeclaims", "create"},
				{"", "persistentvolumeclaims", "delete"},
				{"", "persistentvolumes", "create"},
				{"", "persistentvolumes", "patch"},
				{"", "pods", "create"},
				{"apps", "statefulsets/scale", "update"},
				{"apps", "deployments/scale", "update"},
				{"storage.k8s.io", "csinodes", "get"},
			} {
				if !grants(rules, g.group, g.resource, g.verb) {
					t.Errorf("%s %s/%s not granted", g.verb, g.group, g.resource)
				}
			}
			// Pods: listed, and the read-back pod made and deleted; never changed.
			for _, v := range []string{"update", "patch"} {
				if grants(rules, "", "pods", v) {
					t.Errorf("the mover may %s pods: it scales their owners instead", v)
				}
			}
			if grants(rules, "", "pods/exec", "create") {
				t.Error("the mover may exec into pods")
			}
		})
	}
}

// TestVolumeMoveSchema: every field of a VolumeMove's spec and status (pkg/mover's
// types) is in the CRD's schema. The API server prunes what the schema lacks, so a
// field missing there is a field the mover writes and never reads back.
func TestVolumeMoveSchema(t *testing.T) {
	doc, ok := renderDocs(t, "")["CustomResourceDefinition/volumemoves.berth.csi.io"]
	if !ok {
		t.Fatal("no VolumeMove CRD rendered")
	}
	var crd struct {
		Spec struct {
			Versions []struct {
				Name   string `json:"name"`
				Schema struct {
					OpenAPIV3Schema struct {
						Properties map[string]struct {
							Properties map[string]any `json:"properties"`
						} `json:"properties"`
					} `json:"openAPIV3Schema"`
				} `json:"schema"`
			} `json:"versions"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(doc, &crd); err != nil {
		t.Fatal(err)
	}
	if len(crd.Spec.Versions) != 1 || crd.Spec.Versions[0].Name != mover.Resource.Version {
		t.Fatalf("versions %+v, want %s alone", crd.Spec.Versions, mover.Resource.Version)
	}
	props := crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties
	for part, typ := range map[string]reflect.Type{"spec": reflect.TypeOf(mover.Spec{}), "status": reflect.TypeOf(mover.Status{})} {
		for i := range typ.NumField() {
			name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
			if _, ok := props[part].Properties[name]; !ok {
				t.Errorf("%s.%s (%s.%s) is not in the CRD's schema: the API server would prune it", part, name, typ.Name(), typ.Field(i).Name)
			}
		}
	}
}
