package grouplabel

import (
	"context"
	"errors"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2/ktesting"
)

const driver = "berth.csi.io"

// pv is a PersistentVolume of driver with handle, accessible from node ("": no
// node affinity, as a shared pool's volume).
func pv(name, drv, handle, node string) *corev1.PersistentVolume {
	p := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{PersistentVolumeSource: corev1.PersistentVolumeSource{
			CSI: &corev1.CSIPersistentVolumeSource{Driver: drv, VolumeHandle: handle},
		}},
	}
	if node != "" {
		p.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
				{Key: "topology.berth.csi.io/node", Operator: corev1.NodeSelectorOpIn, Values: []string{node}},
			}}},
		}}
	}
	return p
}

// member is the VolumeSnapshotContent of a group's member as the
// snapshot-controller creates it (group: with the group's handle annotation).
func member(name, drv, handle string, group bool) *unstructured.Unstructured {
	c := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1",
		"kind":       "VolumeSnapshotContent",
		"metadata":   map[string]any{"name": name, "uid": "uid-" + name},
		"spec": map[string]any{
			"driver":         drv,
			"deletionPolicy": "Delete",
			"source":         map[string]any{"volumeHandle": handle},
			"volumeSnapshotRef": map[string]any{
				"kind": "VolumeSnapshot", "namespace": "app", "name": "snapshot-" + name,
			},
		},
	}}
	if group {
		c.SetAnnotations(map[string]string{GroupHandleAnnotation: "g1-img-0123"})
	}
	return c
}

// content is a VolumeGroupSnapshotContent as the snapshot-controller creates it.
func content(name, drv string, handles ...string) *unstructured.Unstructured {
	hs := make([]any, len(handles))
	for i, h := range handles {
		hs[i] = h
	}
	c := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "groupsnapshot.storage.k8s.io/v1",
		"kind":       "VolumeGroupSnapshotContent",
		"metadata":   map[string]any{"name": name, "uid": "uid-" + name},
		"spec": map[string]any{
			"driver":                       drv,
			"deletionPolicy":               "Delete",
			"volumeGroupSnapshotClassName": "berth-node-a",
			"volumeGroupSnapshotRef": map[string]any{
				"kind": "VolumeGroupSnapshot", "namespace": "app", "name": "vgs-" + name, "uid": "vgs-uid",
			},
			"source": map[string]any{"volumeHandles": hs},
		},
	}}
	return c
}

type fixture struct {
	dyn    *dynamicfake.FakeDynamicClient
	kube   *fake.Clientset
	labels map[string]*Labeller // by node
}

func newFixture(t *testing.T, pvs []runtime.Object, contents ...*unstructured.Unstructured) *fixture {
	t.Helper()
	objs := make([]runtime.Object, len(contents))
	for i, c := range contents {
		objs[i] = c
	}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{
			ContentResource: "VolumeGroupSnapshotContentList",
			MemberResource:  "VolumeSnapshotContentList",
		}, objs...)
	kube := fake.NewClientset(pvs...)
	f := &fixture{dyn: dyn, kube: kube, labels: map[string]*Labeller{}}
	for _, node := range []string{"node-a", "node-b"} {
		f.labels[node] = &Labeller{
			Contents: dyn.Resource(ContentResource),
			Members:  dyn.Resource(MemberResource),
			PVs:      kube.CoreV1().PersistentVolumes(),
			Events:   func(ns string) EventCreator { return kube.CoreV1().Events(ns) },
			Driver:   driver,
			Node:     node,
			PageSize: 2,
		}
	}
	return f
}

func (f *fixture) get(t *testing.T, name string) *unstructured.Unstructured {
	t.Helper()
	return f.getOf(t, ContentResource, name)
}

func (f *fixture) getOf(t *testing.T, r schema.GroupVersionResource, name string) *unstructured.Unstructured {
	t.Helper()
	c, err := f.dyn.Resource(r).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *fixture) patches() int {
	n := 0
	for _, a := range f.dyn.Actions() {
		if a.GetVerb() == "patch" {
			n++
		}
	}
	return n
}

func (f *fixture) watches() int {
	n := 0
	for _, a := range f.dyn.Actions() {
		if a.GetVerb() == "watch" {
			n++
		}
	}
	return n
}

func (f *fixture) events(t *testing.T) []corev1.Event {
	t.Helper()
	l, err := f.kube.CoreV1().Events("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

// Five PersistentVolumes, listed two to a page: two of node-a, one of node-b, one
// of a shared pool (no node), one of another driver with the handle of one of
// node-b's volumes.
func volumes() []runtime.Object {
	return []runtime.Object{
		pv("pv-a1", driver, "b1-img-a1", "node-a"),
		pv("pv-a2", driver, "b1-img-a2", "node-a"),
		pv("pv-b1", driver, "b1-img-b1", "node-b"),
		pv("pv-s1", driver, "b1-shared-s1", ""),
		pv("pv-x", "other.csi.io", "b1-img-x", "node-a"),
	}
}

func TestSync(t *testing.T) {
	tests := []struct {
		name    string
		content *unstructured.Unstructured
		setup   func(*unstructured.Unstructured)
		// what each node's labeller makes of it
		wantA, wantB Outcome
		wantLabel    string
		// the node that posts the refusal's event ("": none)
		wantEventBy string
	}{
		{name: "volumes of node-a", content: content("c1", driver, "b1-img-a2", "b1-img-a1"),
			wantA: Labelled, wantB: OtherNode, wantLabel: "node-a"},
		{name: "a volume of node-b", content: content("c1", driver, "b1-img-b1"),
			wantA: OtherNode, wantB: Labelled, wantLabel: "node-b"},
		{name: "volumes on two nodes", content: content("c1", driver, "b1-img-b1", "b1-img-a1"),
			wantA: Refused, wantB: OtherNode, wantEventBy: "node-a"},
		{name: "a volume of no node beside node-b's", content: content("c1", driver, "b1-img-b1", "b1-shared-s1"),
			wantA: OtherNode, wantB: Refused, wantEventBy: "node-b"},
		{name: "a volume with no PersistentVolume beside node-a's", content: content("c1", driver, "b1-img-a1", "b1-img-gone"),
			wantA: Refused, wantB: OtherNode, wantEventBy: "node-a"},
		{name: "volumes of no node", content: content("c1", driver, "b1-shared-s1"),
			wantA: OtherNode, wantB: OtherNode},
		{name: "another driver's content", content: content("c1", "other.csi.io", "b1-img-x"),
			wantA: Ignored, wantB: Ignored},
		{name: "a PV of another driver does not count", content: content("c1", driver, "b1-img-x"),
			wantA: OtherNode, wantB: OtherNode},
		{name: "already labelled", content: content("c1", driver, "b1-img-a1"),
			setup: func(c *unstructured.Unstructured) { c.SetLabels(map[string]string{ManagedByLabel: "node-b"}) },
			wantA: Ignored, wantB: Ignored, wantLabel: "node-b"},
		// Never labelled, so never taken: the node's sidecar lets it go.
		{name: "being deleted", content: content("c1", driver, "b1-img-a1"),
			setup: deleting, wantA: Labelled, wantB: OtherNode, wantLabel: "node-a"},
		{name: "on two nodes, being deleted", content: content("c1", driver, "b1-img-b1", "b1-img-a1"),
			setup: deleting, wantA: Released, wantB: OtherNode, wantLabel: "node-a"},
		{name: "pre-provisioned (no volume handles)", content: content("c1", driver),
			wantA: Ignored, wantB: Ignored},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup(tc.content)
			}
			f := newFixture(t, volumes(), tc.content)
			_, ctx := ktesting.NewTestContext(t)
			// Each node syncs the content as the snapshot-controller made it, then
			// again as it is now: the second time changes nothing.
			made := f.get(t, "c1")
			for _, node := range []string{"node-a", "node-b"} {
				want := map[string]Outcome{"node-a": tc.wantA, "node-b": tc.wantB}[node]
				if got, err := f.labels[node].Sync(ctx, made.DeepCopy()); err != nil || got != want {
					t.Errorf("%s: %s, %v; want %s", node, got, err, want)
				}
			}
			for _, node := range []string{"node-a", "node-b"} {
				if got, err := f.labels[node].Sync(ctx, f.get(t, "c1")); err != nil || got != Ignored {
					t.Errorf("%s again: %s, %v; want ignored", node, got, err)
				}
			}
			if got := f.get(t, "c1").GetLabels()[ManagedByLabel]; got != tc.wantLabel {
				t.Errorf("label %q, want %q", got, tc.wantLabel)
			}
			wantPatches := 0
			if tc.wantA == Labelled || tc.wantA == Released || tc.wantB == Labelled {
				wantPatches = 1
			}
			if got := f.patches(); got != wantPatches {
				t.Errorf("%d patches, want %d", got, wantPatches)
			}
			evs := f.events(t)
			if tc.wantEventBy == "" {
				if len(evs) != 0 {
					t.Errorf("events %+v, want none", evs)
				}
				return
			}
			if len(evs) != 1 {
				t.Fatalf("%d events, want 1: %+v", len(evs), evs)
			}
			ev := evs[0]
			if ev.Source.Host != tc.wantEventBy || ev.Reason != RefusedReason || ev.Type != corev1.EventTypeWarning ||
				ev.Namespace != "app" || ev.InvolvedObject.Kind != "VolumeGroupSnapshot" || ev.InvolvedObject.Name != "vgs-c1" {
				t.Errorf("event %+v", ev)
			}
		})
	}
}

func deleting(c *unstructured.Unstructured) {
	now := metav1.Now()
	c.SetDeletionTimestamp(&now)
	c.SetFinalizers([]string{"groupsnapshot.storage.kubernetes.io/volumegroupsnapshotcontent-bound-protection"})
}

// TestRefusedThenDeleted: a content refused when made, deleted later, is labelled
// by its owner then (the decision kept: no second listing, no second event).
func TestRefusedThenDeleted(t *testing.T) {
	f := newFixture(t, volumes(), content("c1", driver, "b1-img-b1", "b1-img-a1"))
	_, ctx := ktesting.NewTestContext(t)
	for node, want := range map[string]Outcome{"node-a": Refused, "node-b": OtherNode} {
		if got, err := f.labels[node].Sync(ctx, f.get(t, "c1")); err != nil || got != want {
			t.Fatalf("%s: %s, %v; want %s", node, got, err, want)
		}
	}
	lists := len(f.kube.Actions())
	c := f.get(t, "c1")
	deleting(c)
	for node, want := range map[string]Outcome{"node-a": Released, "node-b": Ignored} {
		if got, err := f.labels[node].Sync(ctx, c.DeepCopy()); err != nil || got != want {
			t.Fatalf("deleted, %s: %s, %v; want %s", node, got, err, want)
		}
	}
	if got := f.get(t, "c1").GetLabels()[ManagedByLabel]; got != "node-a" {
		t.Errorf("label %q, want node-a", got)
	}
	if n := len(f.kube.Actions()); n != lists {
		t.Errorf("%d more calls for PersistentVolumes or events after the decision", n-lists)
	}
}

// TestSyncMember: a group's member content is labelled by the node of its
// volume; a snapshot of its own (the snapshot-controller's to label), another
// driver's, or a labelled one is left alone.
func TestSyncMember(t *testing.T) {
	tests := []struct {
		name         string
		member       *unstructured.Unstructured
		wantA, wantB Outcome
		wantLabel    string
	}{
		{"member on node-a", member("m1", driver, "b1-img-a1", true), Labelled, OtherNode, "node-a"},
		{"member on node-b", member("m1", driver, "b1-img-b1", true), OtherNode, Labelled, "node-b"},
		{"member of no node", member("m1", driver, "b1-shared-s1", true), OtherNode, OtherNode, ""},
		{"a snapshot of its own", member("m1", driver, "b1-img-a1", false), Ignored, Ignored, ""},
		{"another driver's member", member("m1", "other.csi.io", "b1-img-x", true), Ignored, Ignored, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, volumes(), tc.member)
			_, ctx := ktesting.NewTestContext(t)
			made := f.getOf(t, MemberResource, "m1")
			for node, want := range map[string]Outcome{"node-a": tc.wantA, "node-b": tc.wantB} {
				if got, err := f.labels[node].SyncMember(ctx, made.DeepCopy()); err != nil || got != want {
					t.Errorf("%s: %s, %v; want %s", node, got, err, want)
				}
				if got, err := f.labels[node].SyncMember(ctx, f.getOf(t, MemberResource, "m1")); err != nil || got != Ignored {
					t.Errorf("%s again: %s, %v; want ignored", node, got, err)
				}
			}
			if got := f.getOf(t, MemberResource, "m1").GetLabels()[ManagedByLabel]; got != tc.wantLabel {
				t.Errorf("label %q, want %q", got, tc.wantLabel)
			}
		})
	}
}

// TestMembersAfterTheGroup: the members' volumes were found for their group: the
// members need no listing of the PersistentVolumes.
func TestMembersAfterTheGroup(t *testing.T) {
	f := newFixture(t, volumes(), content("c1", driver, "b1-img-a1", "b1-img-a2"),
		member("m1", driver, "b1-img-a1", true), member("m2", driver, "b1-img-a2", true))
	_, ctx := ktesting.NewTestContext(t)
	l := f.labels["node-a"]
	if got, err := l.Sync(ctx, f.get(t, "c1")); err != nil || got != Labelled {
		t.Fatalf("Sync: %s, %v", got, err)
	}
	calls := len(f.kube.Actions())
	for _, m := range []string{"m1", "m2"} {
		if got, err := l.SyncMember(ctx, f.getOf(t, MemberResource, m)); err != nil || got != Labelled {
			t.Fatalf("SyncMember %s: %s, %v", m, got, err)
		}
	}
	if n := len(f.kube.Actions()) - calls; n != 0 {
		t.Errorf("%d calls for PersistentVolumes for the members", n)
	}
}

// TestSyncAfterFailure: a listing of PersistentVolumes that fails labels nothing
// and settles nothing; the next Sync labels.
func TestSyncAfterFailure(t *testing.T) {
	f := newFixture(t, volumes(), content("c1", driver, "b1-img-a1"))
	fail := true
	f.kube.PrependReactor("list", "persistentvolumes", func(clienttesting.Action) (bool, runtime.Object, error) {
		if fail {
			return true, nil, errors.New("API server unreachable")
		}
		return false, nil, nil
	})
	_, ctx := ktesting.NewTestContext(t)
	l := f.labels["node-a"]
	if got, err := l.Sync(ctx, f.get(t, "c1")); err == nil || got != Ignored {
		t.Fatalf("Sync: %s, %v; want an error", got, err)
	}
	if f.patches() != 0 {
		t.Fatal("patched after a failed listing")
	}
	fail = false
	if got, err := l.Sync(ctx, f.get(t, "c1")); err != nil || got != Labelled {
		t.Fatalf("Sync: %s, %v; want labelled", got, err)
	}
}

// TestSyncPatchesTheVersionRead: the label's patch carries the resourceVersion
// read, so the API server refuses it (Conflict) for a content changed meanwhile,
// labelled by someone else, rather than overwrite their label.
func TestSyncPatchesTheVersionRead(t *testing.T) {
	c := content("c1", driver, "b1-img-a1")
	c.SetResourceVersion("41")
	f := newFixture(t, volumes(), c)
	_, ctx := ktesting.NewTestContext(t)
	if got, err := f.labels["node-a"].Sync(ctx, f.get(t, "c1")); err != nil || got != Labelled {
		t.Fatalf("Sync: %s, %v", got, err)
	}
	for _, a := range f.dyn.Actions() {
		if p, ok := a.(clienttesting.PatchAction); ok {
			want := `{"metadata":{"labels":{"snapshot.storage.kubernetes.io/managed-by":"node-a"},"resourceVersion":"41"}}`
			if p.GetPatchType() != types.MergePatchType || string(p.GetPatch()) != want {
				t.Errorf("patch %s %s, want a merge patch %s", p.GetPatchType(), p.GetPatch(), want)
			}
		}
	}
}

func TestNodeOf(t *testing.T) {
	term := func(key, node string) corev1.NodeSelectorTerm {
		return corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{
			{Key: key, Operator: corev1.NodeSelectorOpIn, Values: []string{node}},
		}}
	}
	withTerms := func(terms ...corev1.NodeSelectorTerm) *corev1.PersistentVolume {
		p := pv("p", driver, "h", "")
		p.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: terms}}
		return p
	}
	tests := []struct {
		name string
		pv   *corev1.PersistentVolume
		want string
	}{
		{"Berth's topology", pv("p", driver, "h", "node-a"), "node-a"},
		{"no affinity", pv("p", driver, "h", ""), ""},
		{"another key", withTerms(term("kubernetes.io/hostname", "node-a")), ""},
		{"two terms, one node", withTerms(term("topology.berth.csi.io/node", "node-a"), term("topology.berth.csi.io/node", "node-a")), "node-a"},
		{"two terms, two nodes", withTerms(term("topology.berth.csi.io/node", "node-a"), term("topology.berth.csi.io/node", "node-b")), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := NodeOf(tc.pv); got != tc.want {
				t.Errorf("NodeOf: %q, want %q", got, tc.want)
			}
		})
	}
}

// TestRun: a content created while Run watches is labelled by the node of its
// volumes, and not by the other.
func TestRun(t *testing.T) {
	f := newFixture(t, volumes(), content("c0", driver, "b1-img-b1"))
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 2)
	timing := Timing{Resync: time.Minute, RetryAfter: 50 * time.Millisecond, Backoff: 50 * time.Millisecond}
	for _, node := range []string{"node-a", "node-b"} {
		go func() { done <- f.labels[node].Run(ctx, timing) }()
	}
	defer func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}()
	waitLabel := func(name, want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for f.get(t, name).GetLabels()[ManagedByLabel] != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s not labelled %s", name, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitLabel("c0", "node-b")
	// Both watching (the fake's watch does not replay from the listing's version).
	deadline := time.Now().Add(10 * time.Second)
	for f.watches() < 4 {
		if time.Now().After(deadline) {
			t.Fatal("no watches")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Created after the listing: a watch event.
	if _, err := f.dyn.Resource(ContentResource).Create(ctx, content("c1", driver, "b1-img-a1", "b1-img-a2"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitLabel("c1", "node-a")
	// Its members, made once it is taken.
	if _, err := f.dyn.Resource(MemberResource).Create(ctx, member("m1", driver, "b1-img-a1", true), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for f.getOf(t, MemberResource, "m1").GetLabels()[ManagedByLabel] != "node-a" {
		if time.Now().After(deadline) {
			t.Fatal("member m1 not labelled node-a")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestKeepOnly: a listing forgets the decisions on contents of its kind that it no
// longer shows, and no other.
func TestKeepOnly(t *testing.T) {
	f := newFixture(t, volumes(), content("c1", driver, "b1-img-b1"), member("m1", driver, "b1-img-b1", true))
	_, ctx := ktesting.NewTestContext(t)
	l := f.labels["node-a"]
	if got, err := l.Sync(ctx, f.get(t, "c1")); err != nil || got != OtherNode {
		t.Fatalf("Sync: %s, %v", got, err)
	}
	if got, err := l.SyncMember(ctx, f.getOf(t, MemberResource, "m1")); err != nil || got != OtherNode {
		t.Fatalf("SyncMember: %s, %v", got, err)
	}
	l.keepOnly(false, map[types.UID]bool{})
	if _, ok := l.decided["uid-c1"]; ok {
		t.Error("the group content's decision outlived a listing without it")
	}
	if _, ok := l.decided["uid-m1"]; !ok {
		t.Error("a listing of group contents forgot a member's decision")
	}
}
