package orphans_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/orphans"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2"
)

const driver = "berth.csi.io"

// t0 is the scans' clock at the first scan.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// pv is a PersistentVolume of drv naming handle, in phase.
func pv(name, drv, handle string, phase corev1.PersistentVolumePhase) *corev1.PersistentVolume {
	return &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{PersistentVolumeSource: corev1.PersistentVolumeSource{
			CSI: &corev1.CSIPersistentVolumeSource{Driver: drv, VolumeHandle: handle}}},
		Status: corev1.PersistentVolumeStatus{Phase: phase},
	}
}

// vol is a committed volume created age before t0.
func vol(id string, age time.Duration) orphans.Committed {
	return orphans.Committed{ID: id, CreatedAt: t0.Add(-age), ClaimNamespace: "ns", ClaimName: "claim-" + id}
}

// world is a fake cluster and a node's pools, scanned with a clock the test moves.
type world struct {
	kube  *fake.Clientset
	pools []orphans.Pool
	now   time.Time
	scan  *orphans.Scanner
	logs  *testutil.LogLines
}

func newWorld(t *testing.T, pools []orphans.Pool, pvs ...runtime.Object) *world {
	t.Helper()
	w := &world{kube: fake.NewClientset(pvs...), pools: pools, now: t0, logs: &testutil.LogLines{}}
	w.scan = orphans.New(orphans.Config{
		Interval: 5 * time.Minute,
		Lister:   orphans.KubeLister{PVs: w.kube.CoreV1().PersistentVolumes(), Driver: driver},
		Pools:    func() []orphans.Pool { return w.pools },
		Now:      func() time.Time { return w.now },
	})
	return w
}

// run scans once, logging into w.logs.
func (w *world) run() error {
	return w.scan.Scan(klog.NewContext(context.Background(), w.logs.Logger(0)))
}

// counts is the last successful scan's figure of each pool.
func counts(st orphans.Status) map[string]int {
	out := map[string]int{}
	for _, p := range st.Pools {
		out[p.Pool] = p.Orphans
	}
	return out
}

// TestScanCounts: one scan of one served pool, and what it counts as an orphan.
func TestScanCounts(t *testing.T) {
	old := 30 * time.Minute
	for _, tc := range []struct {
		name string
		vols []orphans.Committed
		pvs  []runtime.Object
		want int
	}{
		{name: "no PV names it: orphan", vols: []orphans.Committed{vol("b1-local-a", old)}, want: 1},
		{name: "a bound PV names it", vols: []orphans.Committed{vol("b1-local-a", old)},
			pvs: []runtime.Object{pv("pv-a", driver, "b1-local-a", corev1.VolumeBound)}},
		{name: "a Released PV still names it", vols: []orphans.Committed{vol("b1-local-a", old)},
			pvs: []runtime.Object{pv("pv-a", driver, "b1-local-a", corev1.VolumeReleased)}},
		{name: "a PV of another driver does not name it", vols: []orphans.Committed{vol("b1-local-a", old)},
			pvs: []runtime.Object{pv("pv-a", "other.csi.io", "b1-local-a", corev1.VolumeBound)}, want: 1},
		{name: "inline ephemeral volume", vols: []orphans.Committed{{ID: "b1-local-e", Ephemeral: true, CreatedAt: t0.Add(-old)}}},
		{name: "younger than the grace", vols: []orphans.Committed{vol("b1-local-y", orphans.Grace-time.Second)}},
		{name: "exactly the grace old", vols: []orphans.Committed{vol("b1-local-g", orphans.Grace)}, want: 1},
		{name: "several, some named",
			vols: []orphans.Committed{vol("b1-local-a", old), vol("b1-local-b", old), vol("b1-local-c", old)},
			pvs:  []runtime.Object{pv("pv-b", driver, "b1-local-b", corev1.VolumeBound)}, want: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, []orphans.Pool{{Name: "local", Kind: "dir", Served: true, Volumes: tc.vols}}, tc.pvs...)
			if err := w.run(); err != nil {
				t.Fatal(err)
			}
			st := w.scan.Status()
			if !st.Scanned || !st.OK || !st.LastSuccess.Equal(t0) {
				t.Errorf("status %+v, want a successful scan at %s", st, t0)
			}
			if got := counts(st); len(got) != 1 || got["local"] != tc.want {
				t.Errorf("figures %v, want local: %d", got, tc.want)
			}
			if n := w.logs.Count(`"msg"="Orphaned volume`); n != tc.want {
				t.Errorf("%d orphan log lines, want %d", n, tc.want)
			}
		})
	}
}

// TestScanPoolsNotServed: a pool not served has no figure (its index may be empty
// or old); the others keep theirs.
func TestScanPoolsNotServed(t *testing.T) {
	w := newWorld(t, []orphans.Pool{
		{Name: "local", Kind: "dir", Served: true, Volumes: []orphans.Committed{vol("b1-local-a", time.Hour)}},
		{Name: "fast", Kind: "quota", Served: false},
	})
	if err := w.run(); err != nil {
		t.Fatal(err)
	}
	if got := w.scan.Status().Pools; !slices.Equal(got, []orphans.PoolCount{{Pool: "local", Kind: "dir", Orphans: 1}}) {
		t.Errorf("figures %+v, want local's alone", got)
	}
}

// TestScanLateCommit: a volume filled by a background copy is committed long after
// its record's creation time; it is judged Grace after a scan first found it. The
// volumes the first scan finds are judged by their record alone.
func TestScanLateCommit(t *testing.T) {
	old := time.Hour
	w := newWorld(t, []orphans.Pool{{Name: "local", Kind: "dir", Served: true, Volumes: []orphans.Committed{vol("b1-local-a", old)}}})
	steps := []struct {
		after time.Duration
		add   string // a volume committed meanwhile, its record an hour old
		want  int
	}{
		{0, "", 1},                            // present at the first scan: its record decides
		{5 * time.Minute, "b1-local-late", 1}, // just committed: not judged
		{5 * time.Minute, "", 1},              // seen 5 min ago
		{5 * time.Minute, "", 2},              // seen 10 min ago: judged
	}
	for i, s := range steps {
		w.now = w.now.Add(s.after)
		if s.add != "" {
			w.pools[0].Volumes = append(w.pools[0].Volumes, vol(s.add, old))
		}
		if err := w.run(); err != nil {
			t.Fatal(err)
		}
		if got := counts(w.scan.Status())["local"]; got != s.want {
			t.Errorf("scan %d: %d orphans, want %d", i, got, s.want)
		}
	}
	if n := w.logs.Count("b1-local-late"); n != 1 {
		t.Errorf("the late orphan logged %d times, want once", n)
	}
}

// TestScanListFailureKeepsStaleFigure: a listing that fails (RBAC, the API server
// down) keeps the last figures and their time, marked not OK, logged once per run
// of failures; the next success replaces them.
func TestScanListFailureKeepsStaleFigure(t *testing.T) {
	w := newWorld(t, []orphans.Pool{{Name: "local", Kind: "dir", Served: true, Volumes: []orphans.Committed{vol("b1-local-a", time.Hour)}}})
	if err := w.run(); err != nil {
		t.Fatal(err)
	}
	forbidden := apierrors.NewForbidden(schema.GroupResource{Resource: "persistentvolumes"}, "", errors.New("RBAC: no list"))
	fail := true
	w.kube.PrependReactor("list", "persistentvolumes", func(k8stesting.Action) (bool, runtime.Object, error) {
		return fail, nil, forbidden
	})
	// Meanwhile a PV names the orphan: a failed scan does not see it.
	if _, err := w.kube.CoreV1().PersistentVolumes().Create(context.Background(), pv("pv-a", driver, "b1-local-a", corev1.VolumeBound), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		w.now = w.now.Add(5 * time.Minute)
		if err := w.run(); !apierrors.IsForbidden(err) {
			t.Fatalf("scan %d: %v, want the Forbidden error", i, err)
		}
		st := w.scan.Status()
		if st.OK || !st.LastSuccess.Equal(t0) || counts(st)["local"] != 1 {
			t.Errorf("scan %d: status %+v, want the first scan's figure, stale", i, st)
		}
	}
	if n := w.logs.Count("Orphan scan cannot list PersistentVolumes"); n != 1 {
		t.Errorf("failure logged %d times, want once per run of failures", n)
	}
	fail = false
	w.now = w.now.Add(5 * time.Minute)
	if err := w.run(); err != nil {
		t.Fatal(err)
	}
	if st := w.scan.Status(); !st.OK || !st.LastSuccess.Equal(w.now) || counts(st)["local"] != 0 {
		t.Errorf("after recovery: status %+v, want a fresh figure of 0", st)
	}
	if n := w.logs.Count(`"failedScans"=3`); n != 1 {
		t.Errorf("recovery logged %d times with failedScans=3, want once", n)
	}
}

// TestScanFirstListFails: before any success there is no figure, only the failure.
func TestScanFirstListFails(t *testing.T) {
	w := newWorld(t, []orphans.Pool{{Name: "local", Kind: "dir", Served: true}})
	w.kube.PrependReactor("list", "persistentvolumes", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	if err := w.run(); err == nil {
		t.Fatal("scan succeeded without a listing")
	}
	if st := w.scan.Status(); !st.Scanned || st.OK || !st.LastSuccess.IsZero() || st.Pools != nil {
		t.Errorf("status %+v, want scanned, failed, no figures", st)
	}
}

// pager serves PersistentVolume lists limit at a time, as the API server does.
type pager struct {
	mu       sync.Mutex
	pvs      []corev1.PersistentVolume
	limits   []int64
	expireAt int // the continue token of this page has expired (0: none)
}

func (p *pager) react(a k8stesting.Action) (bool, runtime.Object, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	opts := a.(k8stesting.ListActionImpl).ListOptions
	p.limits = append(p.limits, opts.Limit)
	start := 0
	if opts.Continue != "" {
		start, _ = strconv.Atoi(opts.Continue)
		if p.expireAt != 0 && len(p.limits) == p.expireAt {
			return true, nil, apierrors.NewResourceExpired("the continue token has expired")
		}
	}
	end := min(start+int(opts.Limit), len(p.pvs))
	if opts.Limit == 0 {
		end = len(p.pvs)
	}
	list := &corev1.PersistentVolumeList{Items: p.pvs[start:end]}
	if end < len(p.pvs) {
		list.Continue = strconv.Itoa(end)
	}
	return true, list, nil
}

// TestListHandlesPaginates: the listing asks for pages of pageSize and follows the
// continue tokens to the end; an expired token fails it.
func TestListHandlesPaginates(t *testing.T) {
	p := &pager{}
	for i := range 1234 {
		drv := driver
		if i%10 == 0 {
			drv = "other.csi.io"
		}
		p.pvs = append(p.pvs, *pv(fmt.Sprintf("pv-%d", i), drv, fmt.Sprintf("h-%d", i), corev1.VolumeBound))
	}
	kube := fake.NewClientset()
	kube.PrependReactor("list", "persistentvolumes", p.react)
	h, err := orphans.ListHandles(context.Background(), kube.CoreV1().PersistentVolumes(), driver, 500)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.limits, []int64{500, 500, 500}) {
		t.Errorf("requests with limits %v, want 3 pages of 500", p.limits)
	}
	if len(h) != 1234-124 || !h.Has("h-1233") || !h.Has("h-1") || h.Has("h-10") {
		t.Errorf("%d handles (h-1233 %v, h-10 %v), want the driver's 1110 alone", len(h), h.Has("h-1233"), h.Has("h-10"))
	}

	p.limits, p.expireAt = nil, 2
	if _, err := orphans.ListHandles(context.Background(), kube.CoreV1().PersistentVolumes(), driver, 500); !apierrors.IsResourceExpired(err) {
		t.Errorf("expired continue token: %v, want the 410 error", err)
	}
}
