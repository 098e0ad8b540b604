package mover

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
)

const (
	driver   = "berth.csi.io"
	ns       = "team-a"
	idData   = "b1-default-000000000000000000000000000000d1"
	idCopy   = "b1-default-000000000000000000000000000000c2"
	class    = "berth-local"
	claimUID = types.UID("uid-claim-data")
)

var errCrash = errors.New("the mover was killed")

// world is a fake cluster whose controllers (the PV controller, the per-node
// provisioners, the StatefulSet and Deployment controllers) run at each tick.
type world struct {
	kube  *fake.Clientset
	dyn   *dynfake.FakeDynamicClient
	clock time.Time
	uids  atomic.Int64
	// crashAfter: the mover's mutating calls fail from the nth on (0: never), as
	// if it were killed there; crashing is on while the mover runs.
	crashAfter, calls int
	crashing          bool
	readBacks         int
	// deleted: the volume handles the provisioners deleted.
	deleted []string
	// owner is "StatefulSet", "Deployment" or "" (no pod uses the claim).
	owner string
	// image is the Mover's Image: with it, a claim without pods is read back.
	image string
}

// runReadBack is the kubelet of the read-back pods: Pending until the claim is
// Bound on the pod's node, then Succeeded (its first stage resynced the copy).
func (w *world) runReadBack(t *testing.T) {
	ctx := context.Background()
	pods, err := w.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	must(t, err)
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Labels[LabelMove] == "" || p.Status.Phase == corev1.PodSucceeded {
			continue
		}
		to := p.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms[0].MatchFields[0].Values[0]
		c, err := w.kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, p.Spec.Volumes[0].PersistentVolumeClaim.ClaimName, metav1.GetOptions{})
		if err != nil || c.Status.Phase != corev1.ClaimBound {
			continue
		}
		pv, err := w.kube.CoreV1().PersistentVolumes().Get(ctx, c.Spec.VolumeName, metav1.GetOptions{})
		if err != nil || PVNode(pv) != to || pv.Spec.CSI.VolumeAttributes[AnnResyncFrom] == "" {
			continue
		}
		p.Spec.NodeName, p.Status.Phase = to, corev1.PodSucceeded
		_, err = w.kube.CoreV1().Pods(ns).Update(ctx, p, metav1.UpdateOptions{})
		must(t, err)
		w.readBacks++
	}
}

func node(name string, ready bool) *corev1.Node {
	st := corev1.ConditionTrue
	if !ready {
		st = corev1.ConditionFalse
	}
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{TopologyKey: name}},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: st}}}}
}

func csiNode(name string, drivers ...string) *storagev1.CSINode {
	n := &storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: name}}
	for _, d := range drivers {
		n.Spec.Drivers = append(n.Spec.Drivers, storagev1.CSINodeDriver{Name: d, NodeID: name})
	}
	return n
}

// localPV is a PV of the driver on node (shared when node is ""), bound to claim.
func localPV(name, handle, node, claim string, uid types.UID) *corev1.PersistentVolume {
	p := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name),
			Annotations: map[string]string{annProvisionedBy: driver}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			StorageClassName:              class,
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: driver, VolumeHandle: handle, VolumeAttributes: map[string]string{"pool": "default"}}},
			ClaimRef: &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: ns, Name: claim, UID: uid},
		},
		Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeBound},
	}
	if node != "" {
		p.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: TopologyKey, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}},
		}}}}
	}
	return p
}

func boundClaim(name, pv string, uid types.UID) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: uid, Labels: map[string]string{"app": "web"},
			Annotations: map[string]string{"team": "a", "pv.kubernetes.io/bind-completed": "yes", AnnSelectedNode: "node-a"}},
		Spec: corev1.PersistentVolumeClaimSpec{StorageClassName: ptr.To(class), VolumeName: pv,
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}},
		Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound},
	}
}

func pod(name, node string, owner *metav1.OwnerReference, claim string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: types.UID("uid-" + name)},
		Spec: corev1.PodSpec{NodeName: node, Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	if owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	return p
}

func ownerRef(kind, name string) *metav1.OwnerReference {
	return &metav1.OwnerReference{APIVersion: "apps/v1", Kind: kind, Name: name, UID: types.UID("uid-" + name), Controller: ptr.To(true)}
}

// newWorld: nodes a and b Ready with the driver, c not Ready, d without the
// driver; claim data on node-a, used by the owner's pod (none when owner is "").
func newWorld(t *testing.T, owner string, extra ...runtime.Object) *world {
	t.Helper()
	objs := []runtime.Object{
		node("node-a", true), node("node-b", true), node("node-c", false), node("node-d", true),
		csiNode("node-a", driver), csiNode("node-b", driver), csiNode("node-c", driver), csiNode("node-d", "other.csi.example.com"),
		localPV("pv-data", idData, "node-a", "data", claimUID), boundClaim("data", "pv-data", claimUID),
	}
	switch owner {
	case "StatefulSet":
		objs = append(objs, &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns}, Spec: appsv1.StatefulSetSpec{Replicas: ptr.To[int32](1)}},
			pod("web-0", "node-a", ownerRef("StatefulSet", "web"), "data"))
	case "Deployment":
		objs = append(objs, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns}, Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](1)}},
			&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "web-5d8f", Namespace: ns, OwnerReferences: []metav1.OwnerReference{*ownerRef("Deployment", "web")}}},
			pod("web-5d8f-x", "node-a", ownerRef("ReplicaSet", "web-5d8f"), "data"))
	}
	objs = append(objs, extra...)
	w := &world{kube: fake.NewSimpleClientset(objs...), clock: time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC), owner: owner}
	w.dyn = dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{Resource: ListKind})
	w.scaleReactors("statefulsets", "StatefulSet")
	w.scaleReactors("deployments", "Deployment")
	for _, f := range []*clienttesting.Fake{&w.kube.Fake, &w.dyn.Fake} {
		f.PrependReactor("create", "*", w.assignUID)
		f.PrependReactor("*", "*", w.crash)
	}
	return w
}

// assignUID gives created objects a UID, as the API server does.
func (w *world) assignUID(a clienttesting.Action) (bool, runtime.Object, error) {
	if obj, err := meta.Accessor(a.(clienttesting.CreateAction).GetObject()); err == nil && obj.GetUID() == "" {
		obj.SetUID(types.UID(fmt.Sprintf("uid-%d", w.uids.Add(1))))
	}
	return false, nil, nil
}

func (w *world) crash(a clienttesting.Action) (bool, runtime.Object, error) {
	if !w.crashing || w.crashAfter == 0 {
		return false, nil, nil
	}
	switch a.GetVerb() {
	case "create", "update", "patch", "delete":
		w.calls++
	}
	if w.calls >= w.crashAfter {
		return true, nil, errCrash
	}
	return false, nil, nil
}

// scaleReactors serve the scale subresource from the object's spec.replicas.
func (w *world) scaleReactors(resource, kind string) {
	gvr := appsv1.SchemeGroupVersion.WithResource(resource)
	replicas := func(obj runtime.Object) *int32 {
		if kind == "StatefulSet" {
			return obj.(*appsv1.StatefulSet).Spec.Replicas
		}
		return obj.(*appsv1.Deployment).Spec.Replicas
	}
	w.kube.PrependReactor("get", resource, func(a clienttesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "scale" {
			return false, nil, nil
		}
		obj, err := w.kube.Tracker().Get(gvr, a.GetNamespace(), a.(clienttesting.GetAction).GetName())
		if err != nil {
			return true, nil, err
		}
		return true, &autoscalingv1.Scale{ObjectMeta: metav1.ObjectMeta{Name: a.(clienttesting.GetAction).GetName(), Namespace: a.GetNamespace()},
			Spec: autoscalingv1.ScaleSpec{Replicas: *replicas(obj)}}, nil
	})
	w.kube.PrependReactor("update", resource, func(a clienttesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "scale" {
			return false, nil, nil
		}
		s := a.(clienttesting.UpdateAction).GetObject().(*autoscalingv1.Scale)
		obj, err := w.kube.Tracker().Get(gvr, a.GetNamespace(), s.Name)
		if err != nil {
			return true, nil, err
		}
		*replicas(obj) = s.Spec.Replicas
		return true, s, w.kube.Tracker().Update(gvr, obj, a.GetNamespace())
	})
}

func (w *world) mover() *Mover {
	return &Mover{Cluster: clientset{w.kube}, Dynamic: w.dyn, Image: w.image,
		Driver: driver, Poll: time.Second, Now: func() time.Time { return w.clock }}
}

func (w *world) create(t *testing.T, name, claim, to string) {
	t.Helper()
	u, err := New(ns, name, claim, to).ToUnstructured()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.dyn.Resource(Resource).Namespace(ns).Create(context.Background(), u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (w *world) move(t *testing.T, name string) *VolumeMove {
	t.Helper()
	u, err := w.dyn.Resource(Resource).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mv, err := FromUnstructured(u)
	if err != nil {
		t.Fatal(err)
	}
	return mv
}

// sync runs m once on move name, crashing as set; it returns the Sync's error.
func (w *world) sync(m *Mover, name string) error {
	w.crashing = true
	defer func() { w.crashing = false }()
	_, err := m.Sync(context.Background(), ns, name)
	return err
}

// tick runs the cluster's controllers once and advances the clock by a second.
func (w *world) tick(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	w.clock = w.clock.Add(time.Second)
	core := w.kube.CoreV1()
	pvcs, err := core.PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{})
	must(t, err)
	claims := map[types.UID]bool{}
	for i := range pvcs.Items {
		c := &pvcs.Items[i]
		claims[c.UID] = true
		switch {
		case c.Status.Phase == corev1.ClaimBound:
		case c.Spec.VolumeName == "" && c.Annotations[AnnSelectedNode] != "":
			// The selected node's provisioner clones the source onto it.
			pv := localPV("pvc-"+string(c.UID), idCopy, c.Annotations[AnnSelectedNode], c.Name, c.UID)
			_, err := core.PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
			must(t, err)
			c.Spec.VolumeName, c.Status.Phase = pv.Name, corev1.ClaimBound
			_, err = core.PersistentVolumeClaims(ns).Update(ctx, c, metav1.UpdateOptions{})
			must(t, err)
		case c.Spec.VolumeName != "":
			// The PV controller binds a claim made for a PV.
			pv, err := core.PersistentVolumes().Get(ctx, c.Spec.VolumeName, metav1.GetOptions{})
			if err != nil || pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.Name != c.Name {
				continue
			}
			pv.Spec.ClaimRef.UID, pv.Status.Phase = c.UID, corev1.VolumeBound
			_, err = core.PersistentVolumes().Update(ctx, pv, metav1.UpdateOptions{})
			must(t, err)
			c.Status.Phase = corev1.ClaimBound
			_, err = core.PersistentVolumeClaims(ns).Update(ctx, c, metav1.UpdateOptions{})
			must(t, err)
		}
	}
	pvs, err := core.PersistentVolumes().List(ctx, metav1.ListOptions{})
	must(t, err)
	for i := range pvs.Items {
		pv := &pvs.Items[i]
		if pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.UID == "" || claims[pv.Spec.ClaimRef.UID] {
			continue
		}
		// Released; the provisioner deletes a PV of policy Delete.
		if pv.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimDelete {
			must(t, core.PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{}))
			w.deleted = append(w.deleted, pv.Spec.CSI.VolumeHandle)
		} else if pv.Status.Phase != corev1.VolumeReleased {
			pv.Status.Phase = corev1.VolumeReleased
			_, err := core.PersistentVolumes().Update(ctx, pv, metav1.UpdateOptions{})
			must(t, err)
		}
	}
	w.runPods(t)
}

// runPods is the owner's controller: no pod at 0 replicas, one on the claim's node
// otherwise (Pending while the claim is not Bound).
func (w *world) runPods(t *testing.T) {
	ctx := context.Background()
	w.runReadBack(t)
	var replicas int32
	var name string
	var ref *metav1.OwnerReference
	switch w.owner {
	case "StatefulSet":
		s, err := w.kube.AppsV1().StatefulSets(ns).Get(ctx, "web", metav1.GetOptions{})
		must(t, err)
		replicas, name, ref = *s.Spec.Replicas, "web-0", ownerRef("StatefulSet", "web")
	case "Deployment":
		d, err := w.kube.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		must(t, err)
		replicas, name, ref = *d.Spec.Replicas, "web-5d8f-x", ownerRef("ReplicaSet", "web-5d8f")
	default:
		return
	}
	pods := w.kube.CoreV1().Pods(ns)
	p, err := pods.Get(ctx, name, metav1.GetOptions{})
	exists := err == nil
	if replicas == 0 {
		if exists {
			must(t, pods.Delete(ctx, name, metav1.DeleteOptions{}))
		}
		return
	}
	node := ""
	if c, err := w.kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data", metav1.GetOptions{}); err == nil && c.Status.Phase == corev1.ClaimBound {
		if pv, err := w.kube.CoreV1().PersistentVolumes().Get(ctx, c.Spec.VolumeName, metav1.GetOptions{}); err == nil {
			node = PVNode(pv)
		}
	}
	want := pod(name, node, ref, "data")
	if node == "" {
		want.Status.Phase = corev1.PodPending
	}
	switch {
	case !exists:
		_, err = pods.Create(ctx, want, metav1.CreateOptions{})
	case p.Spec.NodeName != node || p.Status.Phase != want.Status.Phase:
		_, err = pods.Update(ctx, want, metav1.UpdateOptions{})
	}
	must(t, err)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
