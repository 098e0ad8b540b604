package driver

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/pkg/metrics"
	"github.com/berth-csi/berth/pkg/orphans"
	"github.com/berth-csi/berth/pkg/storage"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// untilDone retries f while the engine answers ErrInProgress (a background copy).
func untilDone[T any](t *testing.T, f func() (T, error)) T {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := f()
		if err == nil {
			return v
		}
		if !errors.Is(err, storage.ErrInProgress) || time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOrphanScanOfARealEngine: the orphan figures scraped after real engine
// operations on a dir pool: a volume its PV names, the volume of a deleted Retain
// PV, an inline ephemeral volume and a snapshot; then a restore committed after the
// first scan and the orphan's deletion; then a listing refused.
func TestOrphanScanOfARealEngine(t *testing.T) {
	e := testengine.Start(t, storage.Config{Pools: []storage.PoolConfig{{Name: "local", Path: filepath.Join(t.TempDir(), "local"), Kind: storage.KindDir}}})
	p, ctx := e.DefaultPool(), context.Background()
	create := func(req storage.CreateRequest) *storage.Record {
		req.RequiredBytes, req.AccessType = 1<<20, storage.AccessMount
		return untilDone(t, func() (*storage.Record, error) { return p.Create(ctx, req) })
	}
	kept := create(storage.CreateRequest{Name: "pvc-kept", Claim: &storage.Claim{Namespace: "team-a", Name: "data"}})
	retained := create(storage.CreateRequest{Name: "pvc-retained", Claim: &storage.Claim{Namespace: "old", Name: "retained"}})
	create(storage.CreateRequest{Name: storage.EphemeralName("csi-0123"), Ephemeral: true})
	snap := untilDone(t, func() (*storage.Snapshot, error) {
		s, err := p.CreateSnapshot(ctx, "snap-1", kept.Hash())
		if err == nil && !s.Ready {
			err = storage.ErrInProgress
		}
		return s, err
	})

	kube := fake.NewClientset(&corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pvc-kept"},
		Spec: corev1.PersistentVolumeSpec{PersistentVolumeSource: corev1.PersistentVolumeSource{
			CSI: &corev1.CSIPersistentVolumeSource{Driver: "berth.csi.io", VolumeHandle: kept.ID}}},
	})
	// The records are seconds old: the scans' clock starts past the grace.
	now := time.Now().Add(orphans.Grace + time.Minute)
	scan := orphans.New(orphans.Config{Interval: time.Hour, Lister: orphans.KubeLister{PVs: kube.CoreV1().PersistentVolumes(), Driver: "berth.csi.io"},
		Pools: func() []orphans.Pool { return orphanPools(e) }, Now: func() time.Time { return now }})
	m := metrics.New(e, "n1")
	m.AddOrphanScan(scan.Status)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	scrape := func() string {
		resp, err := srv.Client().Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(body)
	}
	const (
		local   = `{kind="dir",node="n1",pool="local"}`
		success = `berth_orphan_scan_success{node="n1"}`
	)
	check := func(step string, want ...string) {
		t.Helper()
		body := scrape()
		for _, w := range want {
			if !strings.Contains(body, "\n"+w+"\n") {
				t.Errorf("%s: scrape lacks %s", step, w)
			}
		}
	}

	if err := scan.Scan(ctx); err != nil {
		t.Fatal(err)
	}
	// kept has its PV, the inline volume none but is no orphan, the snapshot no volume.
	check("first scan", "berth_pool_volumes"+local+" 3", "berth_pool_snapshots"+local+" 1",
		"berth_pool_orphan_volumes"+local+" 1", success+" 1")

	// A restore committed after the first scan has its PV on the way: it is judged
	// Grace after the scan that first found it. The orphan is deleted.
	create(storage.CreateRequest{Name: "pvc-restored", Source: &storage.Source{Kind: storage.SourceSnapshot, ID: snap.ID}})
	if err := e.DeleteVolume(ctx, retained.ID); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Minute)
	if err := scan.Scan(ctx); err != nil {
		t.Fatal(err)
	}
	check("restored, orphan deleted", "berth_pool_volumes"+local+" 3", "berth_pool_orphan_volumes"+local+" 0", success+" 1")
	now = now.Add(orphans.Grace)
	if err := scan.Scan(ctx); err != nil {
		t.Fatal(err)
	}
	check("the restore's PV never came", "berth_pool_orphan_volumes"+local+" 1", success+" 1")

	// The listing refused: the figure stays, stale; the time is the last success's.
	kube.PrependReactor("list", "persistentvolumes", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("persistentvolumes is forbidden")
	})
	before := scan.Status().LastSuccess
	now = now.Add(5 * time.Minute)
	if err := scan.Scan(ctx); err == nil {
		t.Fatal("scan succeeded with the listing refused")
	}
	check("listing refused", "berth_pool_orphan_volumes"+local+" 1", success+" 0")
	if st := scan.Status(); !st.LastSuccess.Equal(before) {
		t.Errorf("last success %s after a failure, want %s", st.LastSuccess, before)
	}
}
