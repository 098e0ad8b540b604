package kubectlberth

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
)

// The recovery world: claim team-a/data on node-a (NotReady), its pod web-0 there,
// node-b Ready. Snapshots of data: backup-old and backup-new (class backups, pool
// shared), local-snap (class local: no backupPool), newer than both; other-backup
// is a newer backup of another claim.
var (
	backupOld  = time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	backupNew  = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	localSnap  = time.Date(2026, 5, 1, 13, 0, 0, 0, time.UTC)
	recoveryAt = time.Date(2026, 5, 1, 13, 30, 0, 0, time.UTC)
)

const handleNew = "s1-shared-0000000000000000000000000000b002"

func recoverWorld(t *testing.T, objs ...runtime.Object) *world {
	t.Helper()
	oldPV := pv("pv-data", idData, "node-a", "team-a", "data", "1Gi", corev1.VolumeBound)
	oldPV.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimDelete
	oldPV.Spec.ClaimRef.UID = "uid-old"
	base := []runtime.Object{
		node("node-a", corev1.ConditionFalse), node("node-b", corev1.ConditionTrue), oldPV, claimData(),
		claimPod("web-0", "node-a", "data"), claimPod("other", "node-b", "logs"),
	}
	w := newWorld(t, append(base, objs...)...)
	w.dyn = dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		vsResource: "VolumeSnapshotList", vsClassResource: "VolumeSnapshotClassList", vscResource: "VolumeSnapshotContentList",
	},
		snapClass("backups", "berth.csi.io", "shared"), snapClass("local", "berth.csi.io", ""),
		snapClass("elsewhere", "other.csi.example.com", "shared"),
		snapshot("backup-old", "data", "backups", backupOld),
		snapshot("backup-new", "data", "backups", backupNew),
		snapshot("local-snap", "data", "local", localSnap),
		snapshot("other-backup", "logs", "backups", localSnap),
		snapshot("other-driver", "data", "elsewhere", localSnap),
	)
	return w
}

// bindOnCreate makes the provisioner of the test: a created claim is Bound at once to
// pv-new, created at recoveryAt.
func bindOnCreate(t *testing.T, w *world) {
	w.kube.PrependReactor("create", "persistentvolumeclaims", func(a clienttesting.Action) (bool, runtime.Object, error) {
		pvc := a.(clienttesting.CreateAction).GetObject().(*corev1.PersistentVolumeClaim).DeepCopy()
		pvc.UID = "uid-new"
		pvc.CreationTimestamp = metav1.NewTime(recoveryAt)
		pvc.Spec.VolumeName = "pv-new"
		pvc.Status.Phase = corev1.ClaimBound
		if err := w.kube.Tracker().Add(pvc); err != nil {
			t.Error(err)
		}
		return true, pvc, nil
	})
}

func node(name string, ready corev1.ConditionStatus) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: ready}}}}
}

func claimData() *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data", Namespace: "team-a", UID: "uid-old",
			Labels: map[string]string{"app": "db"},
			Annotations: map[string]string{
				"pv.kubernetes.io/bind-completed":          "yes",
				"volume.beta.kubernetes.io/storage-class":  "berth-local",
				annSelectedNode:                            "node-a",
				"volume.kubernetes.io/storage-provisioner": "berth.csi.io",
				"team.example.com/owner":                   "alice",
			},
			Finalizers: []string{"kubernetes.io/pvc-protection"},
		},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: ptr.To("berth-local"),
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			VolumeMode:       ptr.To(corev1.PersistentVolumeFilesystem),
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			VolumeName:       "pv-data",
		},
		Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound},
	}
}

func claimPod(name, node, claim string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "team-a"},
		Spec: corev1.PodSpec{NodeName: node, Volumes: []corev1.Volume{{Name: "v", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
}

func snapClass(name, driver, pool string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
		"metadata": map[string]any{"name": name}, "driver": driver, "deletionPolicy": "Delete",
	}}
	if pool != "" {
		u.Object["parameters"] = map[string]any{paramBackupPool: pool}
	}
	return u
}

// snapshot adds a ready VolumeSnapshot of claim in team-a and its content (content-<name>).
func snapshot(name, claim, class string, created time.Time) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
		"metadata": map[string]any{"name": name, "namespace": "team-a"},
		"spec":     map[string]any{"source": map[string]any{"persistentVolumeClaimName": claim}, "volumeSnapshotClassName": class},
		"status": map[string]any{"readyToUse": true, "creationTime": created.Format(time.RFC3339), "restoreSize": "2Gi",
			"boundVolumeSnapshotContentName": "content-" + name},
	}}
}

// addContents creates the contents the snapshots of w name, with their handles.
func addContents(t *testing.T, w *world, handles map[string]string) {
	t.Helper()
	for snap, h := range handles {
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
			"metadata": map[string]any{"name": "content-" + snap},
			"spec":     map[string]any{"driver": "berth.csi.io"},
			"status":   map[string]any{"snapshotHandle": h, "readyToUse": true},
		}}
		if _, err := w.dyn.Resource(vscResource).Create(t.Context(), u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

var allContents = map[string]string{
	"backup-old": "s1-shared-0000000000000000000000000000b001", "backup-new": handleNew,
	"local-snap": "s1-default-0000000000000000000000000000c001", "other-backup": "s1-shared-0000000000000000000000000000d001",
	"other-driver": "s1-shared-0000000000000000000000000000e001",
}

// mutations are the API calls that change something.
func mutations(w *world) []string {
	var out []string
	for _, a := range w.kube.Actions() {
		switch a.GetVerb() {
		case "create", "update", "patch", "delete":
			out = append(out, a.GetVerb()+" "+a.GetResource().Resource)
		}
	}
	return out
}

func TestRecover(t *testing.T) {
	w := recoverWorld(t)
	addContents(t, w, allContents)
	bindOnCreate(t, w)
	out, errOut, err := w.run(t, "", "recover", "data", "--to", "node-b", "-o", "json")
	if err != nil {
		t.Fatalf("recover: %v\n%s", err, errOut)
	}
	var got RecoverReport
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := RecoverReport{Claim: "team-a/data", LostNode: "node-a", TargetNode: "node-b", Snapshot: "backup-new",
		SnapshotHandle: handleNew, BackupTime: backupNew, LostWindowSeconds: 5400, OldPV: "pv-data", NewPV: "pv-new",
		DeletedPods: []string{"team-a/web-0"}}
	if g, _ := json.Marshal(got); string(g) != string(must(json.Marshal(want))) {
		t.Errorf("report\n%s\nwant\n%s", g, must(json.Marshal(want)))
	}
	for _, field := range []string{`"lostWindowSeconds"`, `"backupTime"`, `"snapshotHandle"`, `"deletedPods"`, `"oldPV"`, `"newPV"`} {
		if !strings.Contains(out, field) {
			t.Errorf("JSON lacks %s", field)
		}
	}

	ctx := t.Context()
	if _, err := w.kube.CoreV1().Pods("team-a").Get(ctx, "web-0", metav1.GetOptions{}); err == nil {
		t.Error("pod web-0 on the lost node not deleted")
	}
	if _, err := w.kube.CoreV1().Pods("team-a").Get(ctx, "other", metav1.GetOptions{}); err != nil {
		t.Errorf("pod other (another claim) touched: %v", err)
	}
	for _, a := range w.kube.Actions() {
		if da, ok := a.(clienttesting.DeleteAction); ok && da.GetResource().Resource == "pods" {
			if gp := da.GetDeleteOptions().GracePeriodSeconds; gp == nil || *gp != 0 {
				t.Errorf("pod %s deleted with grace period %v, want 0", da.GetName(), gp)
			}
		}
	}
	old, err := w.kube.CoreV1().PersistentVolumes().Get(ctx, "pv-data", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if old.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimRetain {
		t.Errorf("old PV's reclaim policy %s, want Retain", old.Spec.PersistentVolumeReclaimPolicy)
	}
	if _, ok := old.Annotations[annRecoverClaim]; !ok {
		t.Errorf("old PV does not record the claim (%s)", annRecoverClaim)
	}

	pvc, err := w.kube.CoreV1().PersistentVolumeClaims("team-a").Get(ctx, "data", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantAnn := map[string]string{"team.example.com/owner": "alice", annSelectedNode: "node-b", annRecoveredFrom: "backup-new"}
	if g, w := must(json.Marshal(pvc.Annotations)), must(json.Marshal(wantAnn)); string(g) != string(w) {
		t.Errorf("new claim's annotations %s, want %s", g, w)
	}
	if pvc.Labels["app"] != "db" {
		t.Errorf("labels %v, want app=db", pvc.Labels)
	}
	ds := pvc.Spec.DataSource
	if ds == nil || ptr.Deref(ds.APIGroup, "") != "snapshot.storage.k8s.io" || ds.Kind != "VolumeSnapshot" || ds.Name != "backup-new" {
		t.Errorf("dataSource %+v, want VolumeSnapshot backup-new", ds)
	}
	s := pvc.Spec
	if ptr.Deref(s.StorageClassName, "") != "berth-local" || len(s.AccessModes) != 1 || s.AccessModes[0] != corev1.ReadWriteOnce ||
		ptr.Deref(s.VolumeMode, "") != corev1.PersistentVolumeFilesystem || s.Selector != nil {
		t.Errorf("spec %+v", s)
	}
	if q := s.Resources.Requests[corev1.ResourceStorage]; q.Cmp(resource.MustParse("2Gi")) != 0 {
		t.Errorf("request %s, want the backup's restoreSize 2Gi (the claim asked 1Gi)", q.String())
	}
	if !strings.Contains(errOut, "Pod team-a/web-0 on node node-a deleted") {
		t.Errorf("stderr:\n%s", errOut)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// TestRecoverText: the human report says what is lost and what to do with the old PV.
func TestRecoverText(t *testing.T) {
	w := recoverWorld(t)
	addContents(t, w, allContents)
	bindOnCreate(t, w)
	out, _, err := w.run(t, "", "recover", "data", "--to", "node-b")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Claim team-a/data recovered on node node-b from snapshot backup-new (" + handleNew + ")",
		"lost:         writes after 2026-05-01T12:00:00Z, 1h30m0s before the recovery",
		"new volume:   pv-new",
		"pv-data kept (reclaim policy Retain): delete it with kubectl delete pv pv-data once node node-a is gone for good",
		"pods deleted: team-a/web-0",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

// TestRecoverRefuses: each refusal changes nothing in the cluster.
func TestRecoverRefuses(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		objs    []runtime.Object
		setup   func(t *testing.T, w *world)
		wantErr error
		wantMsg string
	}{
		{name: "node Ready without --force", args: []string{"--to", "node-b"}, wantErr: ErrNodeReady, wantMsg: "node node-a is Ready",
			setup: func(t *testing.T, w *world) { replace(t, w, node("node-a", corev1.ConditionTrue)) }},
		{name: "no backup", args: []string{"--to", "node-b"}, wantErr: ErrNoBackup, wantMsg: "no ready backup of claim team-a/data",
			setup: func(t *testing.T, w *world) {
				for _, s := range []string{"backup-old", "backup-new"} {
					if err := w.dyn.Resource(vsResource).Namespace("team-a").Delete(t.Context(), s, metav1.DeleteOptions{}); err != nil {
						t.Fatal(err)
					}
				}
			}},
		{name: "--snapshot names a snapshot of a class without backupPool", args: []string{"--to", "node-b", "--snapshot", "local-snap"},
			wantErr: ErrNotBackup, wantMsg: "its class local has no parameter backupPool"},
		{name: "--snapshot names another driver's snapshot", args: []string{"--to", "node-b", "--snapshot", "other-driver"},
			wantErr: ErrNotBackup, wantMsg: `of driver "other.csi.example.com"`},
		{name: "--snapshot names another claim's backup", args: []string{"--to", "node-b", "--snapshot", "other-backup"},
			wantErr: ErrNotBackup, wantMsg: `taken of claim "logs"`},
		{name: "--snapshot names no snapshot", args: []string{"--to", "node-b", "--snapshot", "nope"},
			wantErr: ErrNotBackup, wantMsg: "not found"},
		{name: "shared pool's volume", args: []string{"--to", "node-b"}, wantErr: ErrSharedVolume,
			wantMsg: "claim team-a/data is on a shared pool and follows its pod; nothing to recover",
			setup: func(t *testing.T, w *world) {
				shared := pv("pv-data", idData, "", "team-a", "data", "1Gi", corev1.VolumeBound)
				replace(t, w, shared)
			}},
		{name: "claim in use on another node", args: []string{"--to", "node-b"}, wantErr: ErrClaimInUse,
			wantMsg: "in use by pod web-1 on node node-b", objs: []runtime.Object{claimPod("web-1", "node-b", "data")}},
		{name: "--to is the lost node", args: []string{"--to", "node-a"}, wantErr: ErrBadTarget, wantMsg: "is the claim's own node"},
		{name: "--to names no node", args: []string{"--to", "node-z"}, wantErr: ErrBadTarget, wantMsg: "node node-z (--to) not found"},
		{name: "another driver's PV", args: []string{"--to", "node-b", "--driver", "other.csi.example.com"}, wantErr: ErrNotOurs},
		{name: "no such claim", args: []string{"--to", "node-b", "-n", "team-z"}, wantErr: ErrClaimNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := recoverWorld(t, tc.objs...)
			addContents(t, w, allContents)
			bindOnCreate(t, w)
			if tc.setup != nil {
				tc.setup(t, w)
			}
			w.kube.ClearActions()
			_, errOut, err := w.run(t, "", append([]string{"recover", "data"}, tc.args...)...)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v\n%s", err, tc.wantErr, errOut)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q lacks %q", err, tc.wantMsg)
			}
			if m := mutations(w); len(m) > 0 {
				t.Errorf("refused, yet changed %v", m)
			}
		})
	}
}

func replace(t *testing.T, w *world, obj runtime.Object) {
	t.Helper()
	gvr := map[string]schema.GroupVersionResource{"*v1.Node": {Version: "v1", Resource: "nodes"},
		"*v1.PersistentVolume": {Version: "v1", Resource: "persistentvolumes"}}
	var key string
	switch obj.(type) {
	case *corev1.Node:
		key = "*v1.Node"
	case *corev1.PersistentVolume:
		key = "*v1.PersistentVolume"
	}
	if err := w.kube.Tracker().Update(gvr[key], obj, ""); err != nil {
		t.Fatal(err)
	}
}

// TestRecoverForce: --force proceeds on a Ready node.
func TestRecoverForce(t *testing.T) {
	w := recoverWorld(t)
	addContents(t, w, allContents)
	bindOnCreate(t, w)
	replace(t, w, node("node-a", corev1.ConditionTrue))
	if _, errOut, err := w.run(t, "", "recover", "data", "--to", "node-b", "--force"); err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
}

// TestRecoverSnapshotFlag: --snapshot restores the backup named, not the latest.
func TestRecoverSnapshotFlag(t *testing.T) {
	w := recoverWorld(t)
	addContents(t, w, allContents)
	bindOnCreate(t, w)
	out, errOut, err := w.run(t, "", "recover", "data", "--to", "node-b", "--snapshot", "backup-old", "-o", "json")
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	if !strings.Contains(out, `"snapshot": "backup-old"`) {
		t.Errorf("report:\n%s", out)
	}
}

// recreated is the claim as step 6 leaves it: from backup-new, on node-b, Pending;
// the old PV retained and recording the claim.
func recreated(t *testing.T) *world {
	t.Helper()
	w := recoverWorld(t)
	addContents(t, w, allContents)
	ctx := t.Context()
	old, _ := w.kube.CoreV1().PersistentVolumes().Get(ctx, "pv-data", metav1.GetOptions{})
	if err := retain(ctx, &Clients{Kube: w.kube}, old.Name, recordOf(claimData())); err != nil {
		t.Fatal(err)
	}
	if err := w.kube.CoreV1().PersistentVolumeClaims("team-a").Delete(ctx, "data", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := w.kube.CoreV1().Pods("team-a").Delete(ctx, "web-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	b := &backup{name: "backup-new"}
	pvc := newClaim("team-a", "data", recordOf(claimData()), b, "node-b")
	pvc.UID = "uid-new"
	pvc.CreationTimestamp = metav1.NewTime(recoveryAt)
	pvc.Status.Phase = corev1.ClaimPending
	if err := w.kube.Tracker().Add(pvc); err != nil {
		t.Fatal(err)
	}
	return w
}

// TestRecoverRerun: after step 6, a rerun only waits for the claim to bind and reports.
func TestRecoverRerun(t *testing.T) {
	w := recreated(t)
	gets := 0
	w.kube.PrependReactor("get", "persistentvolumeclaims", func(clienttesting.Action) (bool, runtime.Object, error) {
		if gets++; gets == 2 { // the provisioner binds it while recover waits
			pvc, _ := w.kube.Tracker().Get(schema.GroupVersionResource{Version: "v1", Resource: "persistentvolumeclaims"}, "team-a", "data")
			bound := pvc.(*corev1.PersistentVolumeClaim).DeepCopy()
			bound.Spec.VolumeName, bound.Status.Phase = "pv-new", corev1.ClaimBound
			if err := w.kube.Tracker().Update(schema.GroupVersionResource{Version: "v1", Resource: "persistentvolumeclaims"}, bound, "team-a"); err != nil {
				t.Error(err)
			}
		}
		return false, nil, nil
	})
	w.kube.ClearActions()
	out, errOut, err := w.run(t, "", "recover", "data", "--to", "node-b", "-o", "json")
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	if m := strings.Join(mutations(w), ", "); m != "patch persistentvolumes" {
		t.Errorf("a rerun after step 6 changed %q, want only the old PV's record marked done", m)
	}
	var got RecoverReport
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	want := RecoverReport{Claim: "team-a/data", LostNode: "node-a", TargetNode: "node-b", Snapshot: "backup-new",
		SnapshotHandle: handleNew, BackupTime: backupNew, LostWindowSeconds: 5400, OldPV: "pv-data", NewPV: "pv-new",
		DeletedPods: []string{}, Resumed: true}
	if g, wnt := must(json.Marshal(got)), must(json.Marshal(want)); string(g) != string(wnt) {
		t.Errorf("report\n%s\nwant\n%s", g, wnt)
	}
}

// TestRecoverDoneRecord: once the new claim is bound, the old PV's record is marked
// done: a rerun reports the same, and a claim deleted later is not recreated from it.
func TestRecoverDoneRecord(t *testing.T) {
	w := recoverWorld(t)
	addContents(t, w, allContents)
	bindOnCreate(t, w)
	first, _, err := w.run(t, "", "recover", "data", "--to", "node-b", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	old, _ := w.kube.CoreV1().PersistentVolumes().Get(ctx, "pv-data", metav1.GetOptions{})
	if !strings.Contains(old.Annotations[annRecoverClaim], `"done":true`) {
		t.Errorf("record not marked done: %s", old.Annotations[annRecoverClaim])
	}
	again, _, err := w.run(t, "", "recover", "data", "--to", "node-b", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(again, `"resumed": true`) || !strings.Contains(again, `"oldPV": "pv-data"`) ||
		!strings.Contains(again, `"snapshot": "backup-new"`) || !strings.Contains(first, `"newPV": "pv-new"`) {
		t.Errorf("rerun after the end:\n%s", again)
	}
	if err := w.kube.CoreV1().PersistentVolumeClaims("team-a").Delete(ctx, "data", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.run(t, "", "recover", "data", "--to", "node-b"); !errors.Is(err, ErrClaimNotFound) {
		t.Errorf("after the claim's deletion: %v, want ErrClaimNotFound", err)
	}
}

// TestRecoverNodeGone: a lost node whose Node object was deleted is lost too.
func TestRecoverNodeGone(t *testing.T) {
	w := recoverWorld(t)
	addContents(t, w, allContents)
	bindOnCreate(t, w)
	if err := w.kube.CoreV1().Nodes().Delete(t.Context(), "node-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, errOut, err := w.run(t, "", "recover", "data", "--to", "node-b"); err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
}

// TestRecoverRerunOtherTarget: a rerun naming another node than the one under way is refused.
func TestRecoverRerunOtherTarget(t *testing.T) {
	w := recreated(t)
	if err := w.kube.Tracker().Add(node("node-c", corev1.ConditionTrue)); err != nil {
		t.Fatal(err)
	}
	_, _, err := w.run(t, "", "recover", "data", "--to", "node-c")
	if !errors.Is(err, ErrBadTarget) || !strings.Contains(err.Error(), "run again with --to node-b") {
		t.Errorf("err = %v, want ErrBadTarget naming node-b", err)
	}
}

// TestRecoverAfterClaimDeleted: interrupted between steps 5 and 6 (the claim deleted,
// not yet recreated), a rerun recreates it from the record on the old PV.
func TestRecoverAfterClaimDeleted(t *testing.T) {
	w := recreated(t)
	ctx := t.Context()
	if err := w.kube.CoreV1().PersistentVolumeClaims("team-a").Delete(ctx, "data", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	bindOnCreate(t, w)
	out, errOut, err := w.run(t, "", "recover", "data", "--to", "node-b", "-o", "json")
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	pvc, err := w.kube.CoreV1().PersistentVolumeClaims("team-a").Get(ctx, "data", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pvc.Labels["app"] != "db" || pvc.Annotations["team.example.com/owner"] != "alice" || pvc.Annotations[annRecoveredFrom] != "backup-new" {
		t.Errorf("recreated claim %+v", pvc.ObjectMeta)
	}
	if !strings.Contains(out, `"oldPV": "pv-data"`) || !strings.Contains(out, `"lostNode": "node-a"`) {
		t.Errorf("report:\n%s", out)
	}
}

// TestRecoverTimeout: a claim that does not bind in --timeout is an error that says so;
// a rerun keeps waiting.
func TestRecoverTimeout(t *testing.T) {
	w := recoverWorld(t)
	addContents(t, w, allContents)
	_, _, err := w.run(t, "", "recover", "data", "--to", "node-b", "--timeout", "10ms")
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "not bound after 10ms") {
		t.Errorf("err = %v, want ErrTimeout", err)
	}
}

// TestRecoverClaimHeld: a claim a finalizer keeps past --timeout is named with it.
func TestRecoverClaimHeld(t *testing.T) {
	w := recoverWorld(t)
	addContents(t, w, allContents)
	w.kube.PrependReactor("delete", "persistentvolumeclaims", func(clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, nil // pvc-protection: it stays
	})
	_, _, err := w.run(t, "", "recover", "data", "--to", "node-b", "--timeout", "10ms")
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "held by finalizers kubernetes.io/pvc-protection") {
		t.Errorf("err = %v, want ErrTimeout naming the finalizer", err)
	}
}
