package mover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
)

var allPhases = []Phase{PhasePending, PhaseCopying, PhaseStopping, PhaseSwitching, PhaseStarting, PhaseCleaning, PhaseSucceeded}

// drive syncs the move with m and ticks the cluster until the move is finished or
// the mover is killed (a crash: false).
func (w *world) drive(t *testing.T, m *Mover, name string) bool {
	t.Helper()
	for range 200 {
		err := w.sync(m, name)
		if errors.Is(err, errCrash) {
			return false
		}
		if err != nil {
			t.Fatalf("sync: %v", err)
		}
		if w.move(t, name).Status.Phase.Finished() {
			return true
		}
		w.tick(t)
	}
	t.Fatalf("move %s not finished: %+v", name, w.move(t, name).Status)
	return false
}

// phases are the phases the move's status was written with, in order.
func (w *world) phases(name string) []Phase {
	seen := []Phase{PhasePending}
	for _, a := range w.dyn.Actions() {
		u, ok := a.(clienttesting.UpdateAction)
		if !ok || a.GetSubresource() != "status" {
			continue
		}
		obj, ok := u.GetObject().(*unstructured.Unstructured)
		if !ok || obj.GetName() != name {
			continue
		}
		if p, _, _ := unstructured.NestedString(obj.Object, "status", "phase"); Phase(p) != seen[len(seen)-1] {
			seen = append(seen, Phase(p))
		}
	}
	return seen
}

func TestMove(t *testing.T) {
	for _, tc := range []struct{ owner, image string }{{"StatefulSet", ""}, {"Deployment", ""}, {"", ""}, {"", "berth:test"}, {"StatefulSet", "berth:test"}} {
		t.Run("owner="+tc.owner+",image="+tc.image, func(t *testing.T) {
			w := newWorld(t, tc.owner)
			w.image = tc.image
			w.create(t, "data", "data", "node-b")
			w.drive(t, w.mover(), "data")
			if seen := w.phases("data"); !slices.Equal(seen, allPhases) {
				t.Errorf("phases %v, want %v", seen, allPhases)
			}
			w.checkMoved(t, "data")
		})
	}
}

// TestResume kills the mover before each of its writes in turn (every phase and
// every step within one); a new mover on the same cluster finishes the move.
// Also for a claim without pods, read back by the mover's pod.
func TestResume(t *testing.T) {
	for _, tc := range []struct{ owner, image string }{{"StatefulSet", ""}, {"", "berth:test"}} {
		t.Run("owner="+tc.owner, func(t *testing.T) { resumeEach(t, tc.owner, tc.image) })
	}
}

func resumeEach(t *testing.T, owner, image string) {
	w := newWorld(t, owner)
	w.image = image
	w.crashAfter = 1 << 30
	w.create(t, "data", "data", "node-b")
	w.drive(t, w.mover(), "data")
	writes := w.calls
	if writes < 10 {
		t.Fatalf("a move made %d writes", writes)
	}
	for k := 1; k <= writes; k++ {
		w := newWorld(t, owner)
		w.image = image
		w.create(t, "data", "data", "node-b")
		w.crashAfter = k
		w.drive(t, w.mover(), "data") // finished when killed at its last Event
		killedIn := w.move(t, "data").Status.Phase
		w.crashAfter = 0
		if finished := w.drive(t, w.mover(), "data"); !finished {
			t.Fatalf("killed before write %d, in phase %s: not finished", k, killedIn)
		}
		t.Run(fmt.Sprintf("write %d in phase %q", k, killedIn), func(t *testing.T) { w.checkMoved(t, "data") })
	}
}

// checkMoved: the claim is on node-b, made again on the copy, its pods run there,
// and nothing of the move is left but the source PV when no pod used the copy.
func (w *world) checkMoved(t *testing.T, name string) {
	t.Helper()
	ctx := context.Background()
	mv := w.move(t, name)
	st := mv.Status
	if st.Phase != PhaseSucceeded {
		t.Fatalf("phase %s (%s), want Succeeded", st.Phase, st.Message)
	}
	if len(mv.Finalizers) != 0 {
		t.Errorf("finalizers %v left on the finished move", mv.Finalizers)
	}
	for what, set := range map[string]bool{"startedAt": st.StartedAt != nil, "stoppedAt": st.StoppedAt != nil,
		"switchedAt": st.SwitchedAt != nil, "runningAt": st.RunningAt != nil, "finishedAt": st.FinishedAt != nil} {
		if !set {
			t.Errorf("status.%s not set", what)
		}
	}
	if st.DowntimeSeconds == nil || *st.DowntimeSeconds <= 0 {
		t.Errorf("downtimeSeconds %v", st.DowntimeSeconds)
	}
	c, err := w.kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data", metav1.GetOptions{})
	must(t, err)
	if c.UID == claimUID || c.Status.Phase != corev1.ClaimBound || c.Spec.VolumeName != st.TargetPV || c.Spec.DataSource != nil {
		t.Errorf("claim: uid %s, phase %s, volume %s (want %s), dataSource %v", c.UID, c.Status.Phase, c.Spec.VolumeName, st.TargetPV, c.Spec.DataSource)
	}
	if c.Labels["app"] != "web" || c.Annotations["team"] != "a" || c.Annotations[AnnSelectedNode] != "" || c.Annotations["pv.kubernetes.io/bind-completed"] != "" {
		t.Errorf("claim's labels %v, annotations %v: want the recorded ones without the binding ones", c.Labels, c.Annotations)
	}
	pv, err := w.kube.CoreV1().PersistentVolumes().Get(ctx, st.TargetPV, metav1.GetOptions{})
	must(t, err)
	if PVNode(pv) != "node-b" || pv.Spec.CSI.VolumeHandle != idCopy || pv.Spec.CSI.VolumeAttributes[AnnResyncFrom] != idData ||
		pv.Spec.CSI.VolumeAttributes["pool"] != "default" || pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete ||
		pv.Annotations[annProvisionedBy] != driver || pv.Spec.ClaimRef.Name != "data" {
		t.Errorf("target PV: node %s, spec %+v, annotations %v", PVNode(pv), pv.Spec, pv.Annotations)
	}
	if _, err := w.kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, st.TempClaim, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("temporary claim %s still there: %v", st.TempClaim, err)
	}
	src, err := w.kube.CoreV1().PersistentVolumes().Get(ctx, "pv-data", metav1.GetOptions{})
	// Without pods, the copy is staged by the read-back pod when the mover has an
	// image to run in it; else the source is kept for the first stage's resync.
	kept := w.owner == "" && w.image == ""
	switch {
	case kept && err != nil:
		t.Errorf("source PV: %v; want it kept, no pod having used the copy", err)
	case kept && src.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimRetain:
		t.Errorf("source PV kept with policy %s, want Retain", src.Spec.PersistentVolumeReclaimPolicy)
	case !kept && !apierrors.IsNotFound(err):
		t.Errorf("source PV still there: %v", err)
	}
	if readBack := w.owner == "" && w.image != ""; (st.ReadBackAt != nil) != readBack || (w.readBacks > 0) != readBack {
		t.Errorf("readBackAt %v after %d read-back pods ran; want one: %v", st.ReadBackAt, w.readBacks, readBack)
	}
	pvs, err := w.kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	must(t, err)
	if want := 1 + b2i(kept); len(pvs.Items) != want {
		t.Errorf("%d PVs, want %d", len(pvs.Items), want)
	}
	if w.owner == "" {
		pods, err := w.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		must(t, err)
		if len(pods.Items) != 0 {
			t.Errorf("pods left: %+v", pods.Items)
		}
		return
	}
	pods, err := w.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	must(t, err)
	if len(pods.Items) != 1 || pods.Items[0].Spec.NodeName != "node-b" || pods.Items[0].Status.Phase != corev1.PodRunning {
		t.Errorf("pods %+v, want one running on node-b", pods.Items)
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestRefusals(t *testing.T) {
	other := localPV("pv-other", "vol-1", "node-a", "other", "uid-other")
	other.Spec.CSI.Driver = "other.csi.example.com"
	job := &metav1.OwnerReference{APIVersion: "batch/v1", Kind: "Job", Name: "once", Controller: ptr.To(true)}
	unbound := boundClaim("unbound", "", "uid-unbound")
	unbound.Status.Phase = corev1.ClaimPending
	tests := []struct {
		name, claim, to string
		objs            []runtime.Object
		wantKind        error
		wantReason      string
	}{
		{name: "claim missing", claim: "nope", to: "node-b", wantKind: ErrClaimNotFound, wantReason: "ClaimNotFound"},
		{name: "claim not bound", claim: "unbound", to: "node-b", objs: []runtime.Object{unbound}, wantKind: ErrNotBound, wantReason: "ClaimNotBound"},
		{name: "PV of another driver", claim: "other", to: "node-b", objs: []runtime.Object{other, boundClaim("other", "pv-other", "uid-other")}, wantKind: ErrNotOurs, wantReason: "NotOurs"},
		{name: "shared pool", claim: "shared", to: "node-b", objs: []runtime.Object{localPV("pv-shared", "b1-nfs-1", "", "shared", "uid-shared"),
			boundClaim("shared", "pv-shared", "uid-shared")}, wantKind: ErrSharedVolume, wantReason: "SharedVolume"},
		{name: "target missing", claim: "data", to: "node-x", wantKind: ErrBadTarget, wantReason: "BadTarget"},
		{name: "target not Ready", claim: "data", to: "node-c", wantKind: ErrBadTarget, wantReason: "BadTarget"},
		{name: "target is the source", claim: "data", to: "node-a", wantKind: ErrBadTarget, wantReason: "BadTarget"},
		{name: "target without the driver", claim: "data", to: "node-d", wantKind: ErrBadTarget, wantReason: "BadTarget"},
		{name: "bare pod", claim: "data", to: "node-b", objs: []runtime.Object{pod("bare", "node-a", nil, "data")}, wantKind: ErrPodNotOwned, wantReason: "PodNotOwned"},
		{name: "pod of a Job", claim: "data", to: "node-b", objs: []runtime.Object{pod("once-x", "node-a", job, "data")}, wantKind: ErrPodNotOwned, wantReason: "PodNotOwned"},
		{name: "StatefulSet deleting its claims when scaled down", claim: "data", to: "node-b", objs: []runtime.Object{
			&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: ns}, Spec: appsv1.StatefulSetSpec{
				PersistentVolumeClaimRetentionPolicy: &appsv1.StatefulSetPersistentVolumeClaimRetentionPolicy{WhenScaled: appsv1.DeletePersistentVolumeClaimRetentionPolicyType}}},
			pod("db-0", "node-a", ownerRef("StatefulSet", "db"), "data")}, wantKind: ErrScaleDeletes, wantReason: "ScaleDeletesClaim"},
		{name: "ReplicaSet without Deployment", claim: "data", to: "node-b", objs: []runtime.Object{
			&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "lone", Namespace: ns}}, pod("lone-x", "node-a", ownerRef("ReplicaSet", "lone"), "data")}, wantKind: ErrPodNotOwned, wantReason: "PodNotOwned"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, "StatefulSet", tc.objs...)
			w.create(t, "m", tc.claim, tc.to)
			mv := &VolumeMove{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "m"}, Spec: Spec{Claim: tc.claim, ToNode: tc.to}}
			_, err := w.mover().pending(context.Background(), mv)
			if !errors.Is(err, tc.wantKind) {
				t.Fatalf("pending: %v, want %v", err, tc.wantKind)
			}
			must(t, w.sync(w.mover(), "m"))
			st := w.move(t, "m").Status
			if st.Phase != PhaseFailed || st.Reason != tc.wantReason || st.Message == "" || st.TempClaim != "" {
				t.Errorf("status %+v, want Failed, reason %s", st, tc.wantReason)
			}
			pvcs, err := w.kube.CoreV1().PersistentVolumeClaims(ns).List(context.Background(), metav1.ListOptions{})
			must(t, err)
			if n := len(pvcs.Items); n != 1+len(tc.objs)-countPods(tc.objs) {
				t.Errorf("%d claims after a refusal: something was made", n)
			}
		})
	}
}

func countPods(objs []runtime.Object) int {
	n := 0
	for _, o := range objs {
		if _, ok := o.(*corev1.PersistentVolumeClaim); !ok {
			n++
		}
	}
	return n
}

// TestRollback: a failure before Switching deletes the temporary claim, or the copy's
// PV made ready for the claim, with the copy's volume, and scales the owners back;
// the claim stays where it was.
func TestRollback(t *testing.T) {
	ctx := context.Background()
	tempPVGone := func(w *world, st Status) bool {
		_, err := w.kube.CoreV1().PersistentVolumes().Get(ctx, st.TargetPV, metav1.GetOptions{})
		return st.Phase == PhaseCopying && st.TargetPVRecord != nil && apierrors.IsNotFound(err)
	}
	for _, c := range []struct {
		name   string
		in     func(w *world, st Status) bool
		cancel bool // the VolumeMove deleted there, rather than a pod coming
		reason string
	}{
		{"Copying", func(_ *world, st Status) bool { return st.Phase == PhaseCopying }, false, "PodNotOwned"},
		// The pod is seen at the end of Copying, after the target PV was made.
		{"Copying/recorded", func(_ *world, st Status) bool { return st.Phase == PhaseCopying && st.TargetPVRecord != nil }, false, "PodNotOwned"},
		// Neither the temporary PV's object nor the target PV exists: the copy's
		// volume has only the record.
		{"Copying/temp-pv-gone", tempPVGone, true, "Cancelled"},
		{"Stopping", func(_ *world, st Status) bool { return st.Phase == PhaseStopping }, false, "PodNotOwned"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := newWorld(t, "StatefulSet")
			w.create(t, "data", "data", "node-b")
			m := w.mover()
			m.Poll = time.Hour
			for i := 0; !c.in(w, w.move(t, "data").Status); i++ {
				if i == 50 {
					t.Fatalf("never reached: status %+v", w.move(t, "data").Status)
				}
				must(t, w.sync(m, "data"))
				if !c.in(w, w.move(t, "data").Status) {
					w.tick(t)
				}
			}
			if c.name == "Stopping" {
				must(t, w.sync(m, "data")) // scaled to 0, waits for the pod
			}
			if c.cancel {
				mv := w.move(t, "data")
				now := metav1.Now()
				mv.DeletionTimestamp = &now
				u, err := mv.ToUnstructured()
				must(t, err)
				must(t, w.dyn.Tracker().Update(Resource, u, ns))
			} else {
				// A pod that nothing restarts comes to use the claim.
				_, err := w.kube.CoreV1().Pods(ns).Create(ctx, pod("intruder", "node-a", nil, "data"), metav1.CreateOptions{})
				must(t, err)
			}
			for range 5 {
				must(t, w.sync(m, "data"))
				w.tick(t)
			}
			st := w.move(t, "data").Status
			if st.Phase != PhaseFailed || st.Reason != c.reason || st.FinishedAt == nil {
				t.Fatalf("status %+v, want Failed (%s)", st, c.reason)
			}
			if _, err := w.kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, st.TempClaim, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Errorf("temporary claim %s: %v, want it deleted", st.TempClaim, err)
			}
			sts, err := w.kube.AppsV1().StatefulSets(ns).Get(ctx, "web", metav1.GetOptions{})
			must(t, err)
			if *sts.Spec.Replicas != 1 {
				t.Errorf("StatefulSet at %d replicas, want 1", *sts.Spec.Replicas)
			}
			c, err := w.kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data", metav1.GetOptions{})
			must(t, err)
			if c.UID != claimUID || c.Spec.VolumeName != "pv-data" {
				t.Errorf("claim %s on %s, want the original on pv-data", c.UID, c.Spec.VolumeName)
			}
			pvs, err := w.kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
			must(t, err)
			if len(pvs.Items) != 1 || pvs.Items[0].Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
				t.Errorf("PVs %+v, want pv-data alone, policy unchanged", pvs.Items)
			}
			if !slices.Equal(w.deleted, []string{idCopy}) {
				t.Errorf("volumes deleted by the provisioners: %v, want the copy %s alone", w.deleted, idCopy)
			}
		})
	}
}

// TestCancel: deleting a VolumeMove before Switching rolls it back; the finalizer
// goes once it is Failed.
func TestCancel(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t, "StatefulSet")
	w.create(t, "data", "data", "node-b")
	m := w.mover()
	for w.move(t, "data").Status.Phase != PhaseStopping {
		must(t, w.sync(m, "data"))
		w.tick(t)
	}
	mv := w.move(t, "data")
	if !slices.Contains(mv.Finalizers, Finalizer) {
		t.Fatalf("finalizers %v, want %s", mv.Finalizers, Finalizer)
	}
	now := metav1.Now()
	mv.DeletionTimestamp = &now
	u, err := mv.ToUnstructured()
	must(t, err)
	must(t, w.dyn.Tracker().Update(Resource, u, ns))
	must(t, w.sync(m, "data"))
	mv = w.move(t, "data")
	if mv.Status.Phase != PhaseFailed || mv.Status.Reason != "Cancelled" || len(mv.Finalizers) != 0 {
		t.Errorf("phase %s, reason %s, finalizers %v: want Failed, Cancelled, none", mv.Status.Phase, mv.Status.Reason, mv.Finalizers)
	}
	if _, err := w.kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, mv.Status.TempClaim, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("temporary claim: %v, want it deleted", err)
	}
	sts, err := w.kube.AppsV1().StatefulSets(ns).Get(ctx, "web", metav1.GetOptions{})
	must(t, err)
	if *sts.Spec.Replicas != 1 {
		t.Errorf("StatefulSet at %d replicas, want 1", *sts.Spec.Replicas)
	}
}

// TestBusy: a second move that would stop the same StatefulSet waits for the first.
func TestBusy(t *testing.T) {
	w := newWorld(t, "StatefulSet", localPV("pv-logs", "b1-default-000000000000000000000000000000e5", "node-a", "logs", "uid-logs"),
		boundClaim("logs", "pv-logs", "uid-logs"))
	p := pod("web-1", "node-a", ownerRef("StatefulSet", "web"), "logs")
	_, err := w.kube.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{})
	must(t, err)
	w.create(t, "data", "data", "node-b")
	w.create(t, "logs", "logs", "node-b")
	must(t, w.sync(w.mover(), "data"))
	must(t, w.sync(w.mover(), "logs"))
	if st := w.move(t, "logs").Status; st.Phase != PhasePending && st.Phase != "" || st.Message == "" {
		t.Errorf("second move: %+v, want it Pending, waiting for the first", st)
	}
}

// TestRun: the list and watch loop hands a new move to a worker, which takes it
// as far as it goes without the cluster's controllers (Copying), and stops with ctx.
func TestRun(t *testing.T) {
	w := newWorld(t, "StatefulSet")
	m := w.mover()
	m.Now = nil // the workers' clock; the test's is not theirs to read
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, 2, time.Minute) }()
	w.create(t, "data", "data", "node-b")
	deadline := time.Now().Add(10 * time.Second)
	for w.move(t, "data").Status.Phase != PhaseCopying {
		if time.Now().After(deadline) {
			t.Fatalf("move not in Copying after 10s: %+v", w.move(t, "data").Status)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// TestPollIn: while the pods are down, waits are looked at four times as often.
func TestPollIn(t *testing.T) {
	m := &Mover{Poll: time.Second}
	for p, want := range map[Phase]time.Duration{PhasePending: time.Second, PhaseCopying: time.Second,
		PhaseStopping: 250 * time.Millisecond, PhaseSwitching: 250 * time.Millisecond, PhaseStarting: 250 * time.Millisecond,
		PhaseCleaning: time.Second} {
		if got := m.pollIn(p); got != want {
			t.Errorf("pollIn(%s) = %s, want %s", p, got, want)
		}
	}
}

// TestOlderMoversStopping: a move that an older mover (which exchanged the PVs in
// Switching) brought to Stopping, the temporary claim and its PV untouched: this
// mover records the PV and makes it ready in Switching, and finishes the move.
func TestOlderMoversStopping(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t, "StatefulSet")
	w.create(t, "data", "data", "node-b")
	m := w.mover()
	must(t, w.sync(m, "data")) // Copying: the temporary claim made
	w.tick(t)                  // and bound on node-b
	mv := w.move(t, "data")
	st := &mv.Status
	tmp, err := w.kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, st.TempClaim, metav1.GetOptions{})
	must(t, err)
	pv, err := w.kube.CoreV1().PersistentVolumes().Get(ctx, tmp.Spec.VolumeName, metav1.GetOptions{})
	if err != nil || st.Phase != PhaseCopying {
		t.Fatalf("temporary claim's PV: %v, phase %s", err, st.Phase)
	}
	now, stop := metav1.NewTime(w.clock), metav1.NewMicroTime(w.clock)
	st.TargetPV, st.TempPVUID, st.TargetVolume = pv.Name, pv.UID, pv.Spec.CSI.VolumeHandle
	st.TargetReclaimPolicy = pv.Spec.PersistentVolumeReclaimPolicy
	st.Owners, st.CopiedAt, st.StoppedAt = []Owner{{Kind: "StatefulSet", Name: "web", Replicas: 1}}, &now, &stop
	st.Phase, st.Message = PhaseStopping, "Stopping StatefulSet web"
	u, err := mv.ToUnstructured()
	must(t, err)
	must(t, w.dyn.Tracker().Update(Resource, u, ns))

	if !w.drive(t, m, "data") {
		t.Fatal("not finished")
	}
	w.checkMoved(t, "data")
}
