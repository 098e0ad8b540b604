package kubectlberth

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-csi/berth/pkg/mover"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	clienttesting "k8s.io/client-go/testing"
)

const localClass = "berth-local"

// moveWorld is a fake cluster with the VolumeMove resource, whose mover is a
// script: each read of a move gives it the next status of its script (the last
// one stays), as the chart's mover would have written them meanwhile.
type moveWorld struct {
	*world
	mu      sync.Mutex
	scripts map[string][]mover.Status // namespace/name -> statuses to come
	// maxRunning is the most unfinished moves made by the command there were
	// when it made one.
	maxRunning int
	created    map[string]bool
}

func newMoveWorld(t *testing.T, objs ...runtime.Object) *moveWorld {
	t.Helper()
	w := &moveWorld{world: newWorld(t, objs...), scripts: map[string][]mover.Status{}, created: map[string]bool{}}
	w.dyn = dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{vscResource: "VolumeSnapshotContentList", mover.Resource: mover.ListKind})
	w.dyn.PrependReactor("get", "volumemoves", func(a clienttesting.Action) (bool, runtime.Object, error) {
		w.advance(t, a.GetNamespace(), a.(clienttesting.GetAction).GetName())
		return false, nil, nil
	})
	w.dyn.PrependReactor("create", "volumemoves", func(a clienttesting.Action) (bool, runtime.Object, error) {
		list, err := w.dyn.Tracker().List(mover.Resource, mover.Resource.GroupVersion().WithKind(mover.Kind), "")
		if err != nil {
			return true, nil, err
		}
		running := 1
		for _, u := range list.(*unstructured.UnstructuredList).Items {
			if p, _, _ := unstructured.NestedString(u.Object, "status", "phase"); !mover.Phase(p).Finished() && w.created[u.GetName()] {
				running++
			}
		}
		w.created[a.(clienttesting.CreateAction).GetObject().(*unstructured.Unstructured).GetName()] = true
		w.maxRunning = max(w.maxRunning, running)
		return false, nil, nil
	})
	return w
}

// script sets the statuses that move ns/name goes through.
func (w *moveWorld) script(ns, name string, statuses ...mover.Status) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.scripts[ns+"/"+name] = statuses
}

func (w *moveWorld) advance(t *testing.T, ns, name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	seq := w.scripts[ns+"/"+name]
	if len(seq) == 0 {
		return
	}
	obj, err := w.dyn.Tracker().Get(mover.Resource, ns, name)
	if err != nil {
		return
	}
	mv, err := mover.FromUnstructured(obj.(*unstructured.Unstructured))
	if err != nil {
		t.Error(err)
		return
	}
	mv.Status = seq[0]
	if len(seq) > 1 {
		w.scripts[ns+"/"+name] = seq[1:]
	}
	u, err := mv.ToUnstructured()
	if err == nil {
		err = w.dyn.Tracker().Update(mover.Resource, u, ns)
	}
	if err != nil {
		t.Error(err)
	}
}

// addMove stores a VolumeMove as it is.
func (w *moveWorld) addMove(t *testing.T, mv *mover.VolumeMove) {
	t.Helper()
	u, err := mv.ToUnstructured()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.dyn.Tracker().Add(u); err != nil {
		t.Fatal(err)
	}
}

func (w *moveWorld) getMove(t *testing.T, ns, name string) *mover.VolumeMove {
	t.Helper()
	mv, err := getMove(context.Background(), &Clients{Dynamic: w.dyn}, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	return mv
}

func at(min int) *metav1.Time {
	t := metav1.NewTime(time.Date(2026, 12, 3, 10, min, 0, 0, time.UTC))
	return &t
}

// microAt is at(min) and a fraction of a second, which reports leave out.
func microAt(min int) *metav1.MicroTime {
	t := metav1.NewMicroTime(time.Date(2026, 12, 3, 10, min, 0, 250000000, time.UTC))
	return &t
}

// succeeded is the status of a move of team-a/data from node-a, finished.
func succeeded(down int64) mover.Status {
	return mover.Status{Phase: mover.PhaseSucceeded, SourceNode: "node-a", StartedAt: at(0), StoppedAt: microAt(5), SwitchedAt: at(5),
		RunningAt: microAt(6), FinishedAt: at(7), DowntimeSeconds: &down,
		Message: "Moved claim data from node node-a to node node-b, 60s without its pods; source volume deleted"}
}

func running(p mover.Phase) mover.Status {
	return mover.Status{Phase: p, SourceNode: "node-a", StartedAt: at(0), Message: string(p) + ": working"}
}

func TestMove(t *testing.T) {
	for _, tc := range []struct {
		name, golden string
		args         []string
	}{
		{"table", "move.txt", nil},
		{"json", "move.json", []string{"-o", "json"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newMoveWorld(t)
			w.script("team-a", "data", running(mover.PhaseCopying), running(mover.PhaseCopying), running(mover.PhaseStopping),
				running(mover.PhaseSwitching), running(mover.PhaseStarting), running(mover.PhaseCleaning), succeeded(60))
			out, errOut, err := w.run(t, "", append([]string{"move", "data", "--to", "node-b", "--poll", "0s"}, tc.args...)...)
			if err != nil {
				t.Fatalf("move: %v\n%s", err, errOut)
			}
			golden(t, tc.golden, out)
			for _, p := range []string{"Copying", "Stopping", "Switching", "Starting", "Cleaning", "Succeeded"} {
				if strings.Count(errOut, "team-a/data "+p+":") != 1 {
					t.Errorf("phase %s not said once on stderr:\n%s", p, errOut)
				}
			}
			if mv := w.getMove(t, "team-a", "data"); mv.Spec.Claim != "data" || mv.Spec.ToNode != "node-b" {
				t.Errorf("VolumeMove spec %+v", mv.Spec)
			}
		})
	}
}

func TestMoveFailed(t *testing.T) {
	w := newMoveWorld(t)
	w.script("team-a", "data", mover.Status{Phase: mover.PhaseFailed, Reason: "PodNotOwned", FinishedAt: at(1),
		Message: "pod team-a/bare uses the claim and has no controller: bare pods cannot be restarted elsewhere"})
	out, _, err := w.run(t, "", "move", "data", "--to", "node-b", "--poll", "0s")
	if !errors.Is(err, ErrMoveFailed) {
		t.Fatalf("move: %v, want ErrMoveFailed", err)
	}
	golden(t, "move-failed.txt", out)
}

// TestMoveExisting: a finished move of the same name is replaced; a running one
// is followed, unless it moves the claim elsewhere.
func TestMoveExisting(t *testing.T) {
	for _, tc := range []struct {
		name     string
		old      mover.Status
		oldTo    string
		wantErr  error
		creates  int
		wantNode string
	}{
		{name: "finished is replaced", old: succeeded(3), oldTo: "node-c", creates: 1, wantNode: "node-b"},
		{name: "failed is replaced", old: mover.Status{Phase: mover.PhaseFailed}, oldTo: "node-b", creates: 1, wantNode: "node-b"},
		{name: "running is followed", old: running(mover.PhaseCopying), oldTo: "node-b", creates: 0, wantNode: "node-b"},
		{name: "running elsewhere is refused", old: running(mover.PhaseCopying), oldTo: "node-c", wantErr: ErrBadTarget, wantNode: "node-c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newMoveWorld(t)
			old := mover.New("team-a", "data", "data", tc.oldTo)
			old.Status = tc.old
			w.addMove(t, old)
			if tc.wantErr == nil {
				w.script("team-a", "data", tc.old, succeeded(3)) // the first read finds the old move
			}
			_, _, err := w.run(t, "", "move", "data", "--to", "node-b", "--poll", "0s")
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("move: %v, want %v", err, tc.wantErr)
			}
			creates := 0
			for _, a := range w.dyn.Actions() {
				if a.GetVerb() == "create" {
					creates++
				}
			}
			if creates != tc.creates {
				t.Errorf("%d VolumeMoves created, want %d", creates, tc.creates)
			}
			if mv := w.getMove(t, "team-a", "data"); mv.Spec.ToNode != tc.wantNode {
				t.Errorf("the move goes to %s, want %s", mv.Spec.ToNode, tc.wantNode)
			}
		})
	}
}

// TestMoveTimeout: on timeout the report says where the move is, and the error
// says that it goes on.
func TestMoveTimeout(t *testing.T) {
	w := newMoveWorld(t)
	w.script("team-a", "data", running(mover.PhaseCopying))
	out, _, err := w.run(t, "", "move", "data", "--to", "node-b", "--poll", "1ms", "--timeout", "5ms")
	if !errors.Is(err, ErrTimeout) || !strings.Contains(out, "moving from node node-a to node node-b: Copying") {
		t.Errorf("move: %v, want ErrTimeout; output:\n%s", err, out)
	}
}

func TestMoveNoWait(t *testing.T) {
	w := newMoveWorld(t)
	out, _, err := w.run(t, "", "move", "data", "--to", "node-b", "--wait=false")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "Claim team-a/data moving from node - to node node-b: Pending.") {
		t.Errorf("output:\n%s", out)
	}
}

func TestMoveStatus(t *testing.T) {
	w := newMoveWorld(t)
	done := mover.New("team-a", "data", "data", "node-b")
	done.Status = succeeded(60)
	w.addMove(t, done)
	copying := mover.New("team-a", "logs", "logs", "node-c")
	copying.Status = running(mover.PhaseCopying)
	w.addMove(t, copying)
	w.addMove(t, mover.New("team-b", "cache", "cache", "node-a"))
	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"move-status.txt", []string{"move", "status"}},
		{"move-status-all.yaml", []string{"move", "status", "-A", "-o", "yaml"}},
	} {
		out, _, err := w.run(t, "", tc.args...)
		if err != nil {
			t.Fatal(err)
		}
		golden(t, tc.golden, out)
	}
}

// evacuation: node-a holds four claims of class berth-local (100, 10, 4 and 1 GiB),
// one of a shared pool and one of another driver. node-b has room for 12 GiB,
// node-d for 5, node-c is cordoned, node-e runs no driver, node-f is not Ready.
func evacuation(t *testing.T) *moveWorld {
	t.Helper()
	local := func(name, id, claim, size string) *corev1.PersistentVolume {
		p := pv(name, id, "node-a", "team-a", claim, size, corev1.VolumeBound)
		p.Spec.StorageClassName = localClass
		return p
	}
	other := local("pv-other", "vol-9", "other", "1Gi")
	other.Spec.CSI.Driver = "other.csi.example.com"
	objs := []runtime.Object{
		local("pv-huge", "b1-default-000000000000000000000000000000a1", "huge", "100Gi"),
		local("pv-big", "b1-default-000000000000000000000000000000a2", "big", "10Gi"),
		local("pv-mid", "b1-default-000000000000000000000000000000a3", "mid", "4Gi"),
		local("pv-small", "b1-default-000000000000000000000000000000a4", "small", "1Gi"),
		pv("pv-shared", "b1-nfs-000000000000000000000000000000a5", "", "team-a", "shared", "1Gi", corev1.VolumeBound),
		other,
		pv("pv-b", "b1-default-000000000000000000000000000000b1", "node-b", "team-a", "there", "1Gi", corev1.VolumeBound),
	}
	for _, n := range []struct {
		name              string
		ready, cordoned   bool
		driver            bool
		capacity, maxSize string
	}{
		{"node-a", true, true, true, "100Gi", ""},
		{"node-b", true, false, true, "12Gi", ""},
		{"node-c", true, true, true, "200Gi", ""},
		{"node-d", true, false, true, "5Gi", "5Gi"},
		{"node-e", true, false, false, "", ""},
		{"node-f", false, false, true, "200Gi", ""},
	} {
		cond := corev1.ConditionTrue
		if !n.ready {
			cond = corev1.ConditionFalse
		}
		objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: map[string]string{topologyKey: n.name}},
			Spec:   corev1.NodeSpec{Unschedulable: n.cordoned},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: cond}}}})
		if n.driver {
			objs = append(objs, &storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: n.name},
				Spec: storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{{Name: "berth.csi.io", NodeID: n.name}}}})
		}
		if n.capacity != "" {
			c := &storagev1.CSIStorageCapacity{ObjectMeta: metav1.ObjectMeta{Name: "cap-" + n.name, Namespace: driverNS},
				StorageClassName: localClass, Capacity: ptrQ(n.capacity),
				NodeTopology: &metav1.LabelSelector{MatchLabels: map[string]string{topologyKey: n.name}}}
			if n.maxSize != "" {
				c.MaximumVolumeSize = ptrQ(n.maxSize)
			}
			// A smaller one of another class, which does not count.
			objs = append(objs, c, &storagev1.CSIStorageCapacity{ObjectMeta: metav1.ObjectMeta{Name: "other-" + n.name, Namespace: driverNS},
				StorageClassName: "other", Capacity: ptrQ("1Ti"), NodeTopology: c.NodeTopology})
		}
	}
	return newMoveWorld(t, objs...)
}

func ptrQ(s string) *resource.Quantity {
	q := resource.MustParse(s)
	return &q
}

func TestEvacuate(t *testing.T) {
	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"evacuate.txt", nil},
		{"evacuate.json", []string{"-o", "json"}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			w := evacuation(t)
			// The small claim is being moved elsewhere already: reported, not waited for.
			busy := mover.New("team-a", "small", "small", "node-c")
			busy.Status = running(mover.PhaseCopying)
			w.addMove(t, busy)
			for _, c := range []string{"big", "mid"} {
				st := succeeded(int64(len(c)))
				st.Message = "Moved claim " + c
				w.script("team-a", c, running(mover.PhaseCopying), running(mover.PhaseSwitching), st)
			}
			out, errOut, err := w.run(t, "", append([]string{"evacuate", "node-a", "--parallel", "2", "--poll", "0s"}, tc.args...)...)
			if !errors.Is(err, ErrMoveFailed) || !strings.Contains(err.Error(), "team-a/huge, team-a/small") {
				t.Fatalf("evacuate: %v, want ErrMoveFailed naming the claim that stays\n%s", err, errOut)
			}
			golden(t, tc.golden, out)
			want := map[string]string{"big": "node-b", "mid": "node-d", "small": "node-c"}
			for c, node := range want {
				if mv := w.getMove(t, "team-a", c); mv.Spec.ToNode != node {
					t.Errorf("claim %s moved to %s, want %s", c, mv.Spec.ToNode, node)
				}
			}
			if w.maxRunning > 2 {
				t.Errorf("%d moves ran at once, want at most --parallel 2", w.maxRunning)
			}
		})
	}
}

// TestEvacuateNamespace: with -n, only that namespace's claims of the node move.
func TestEvacuateNamespace(t *testing.T) {
	w := evacuation(t)
	out, errOut, err := w.run(t, "", "evacuate", "node-a", "-n", "team-b", "--poll", "0s", "-o", "json")
	if err != nil {
		t.Fatalf("evacuate -n team-b: %v\n%s", err, errOut)
	}
	if !strings.Contains(out, `"claims": []`) {
		t.Errorf("evacuate -n team-b of a node holding team-a's claims alone:\n%s", out)
	}
	if moves, err := w.dyn.Resource(mover.Resource).Namespace("team-a").List(context.Background(), metav1.ListOptions{}); err != nil || len(moves.Items) != 0 {
		t.Errorf("moves made in team-a: %v, %v", moves, err)
	}
}

// TestPlace: the largest claim first, each on the node with the most room left.
func TestPlace(t *testing.T) {
	node := func(name string) corev1.Node {
		return corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{topologyKey: name}}}
	}
	capOf := func(n, size string) storagev1.CSIStorageCapacity {
		return storagev1.CSIStorageCapacity{StorageClassName: localClass, Capacity: ptrQ(size),
			NodeTopology: &metav1.LabelSelector{MatchLabels: map[string]string{topologyKey: n}}}
	}
	claim := func(name, size string) evacuee {
		return evacuee{ns: "ns", claim: name, class: localClass, size: resource.MustParse(size)}
	}
	got := place([]evacuee{claim("a", "1Gi"), claim("b", "3Gi"), claim("c", "3Gi"), claim("d", "9Gi")},
		[]corev1.Node{node("n1"), node("n2")}, []storagev1.CSIStorageCapacity{capOf("n1", "6Gi"), capOf("n2", "8Gi"), capOf("n2", "7Gi")})
	var s []string
	for _, p := range got {
		s = append(s, p.claim+">"+orDash(p.to))
	}
	if want := "d>-,b>n2,c>n1,a>n2"; strings.Join(s, ",") != want {
		t.Errorf("placed %s, want %s", strings.Join(s, ","), want)
	}
}
