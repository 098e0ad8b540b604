package driver_test

import (
	"context"
	"errors"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/fakehost"
	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/driver"
	"github.com/berth-csi/berth/pkg/metrics"
	"github.com/berth-csi/berth/pkg/orphans"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// TestRunOrphanScan: with --orphan-scan-interval the driver scans once ready,
// asking the pv-lister at --pv-lister-endpoint (here served in the test over a fake
// cluster), and its metrics show the figure of each served pool and none of a pool
// not served. Without the flag there is no orphan series.
func TestRunOrphanScan(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run("scan "+map[bool]string{true: "on", false: "off"}[on], func(t *testing.T) {
			base := t.TempDir()
			kubelet := filepath.Join(base, "kubelet")
			if err := os.MkdirAll(filepath.Join(kubelet, "pods"), 0o750); err != nil {
				t.Fatal(err)
			}
			sock := filepath.Join(testutil.ShortTempDir(t), "pv-lister.sock")
			lis, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- orphans.ServeLister(ctx, lis, orphans.KubeLister{PVs: fake.NewClientset().CoreV1().PersistentVolumes(), Driver: "berth.csi.io"})
			}()
			t.Cleanup(func() { cancel(); <-done })
			port := testutil.FreePort(t)
			url := "http://127.0.0.1:" + strconv.Itoa(port) + "/metrics"
			o := driver.Options{
				Endpoint: filepath.Join(testutil.ShortTempDir(t), "csi.sock"), NodeID: "n1", DriverName: "berth.csi.io",
				Mode: driver.ModeAll, KubeletDir: kubelet, Host: fakehost.New(t.TempDir()).Host(),
				Config: storage.Config{Pools: []storage.PoolConfig{
					{Name: "local", Path: filepath.Join(base, "local"), Kind: storage.KindDir},
					{Name: "shared", Path: filepath.Join(base, "shared"), Kind: storage.KindShared}, // not mounted: not served
				}},
				PoolRetry: time.Hour, MetricsAddress: "127.0.0.1:" + strconv.Itoa(port), PVListerEndpoint: sock,
			}
			if on {
				o.OrphanScanInterval = time.Hour
			}
			if err := os.MkdirAll(filepath.Join(base, "shared"), 0o700); err != nil {
				t.Fatal(err)
			}
			waitProbe(t, csi.NewIdentityClient(startDriver(t, o)))
			if !on {
				absent(t, scrape(t, url), "scan off", "berth_orphan_scan_success",
					"berth_orphan_scan_last_success_timestamp_seconds", "berth_pool_orphan_volumes")
				return
			}
			deadline := time.Now().Add(testWait)
			m := scrape(t, url)
			for len(m["berth_orphan_scan_success"]) == 0 {
				if time.Now().After(deadline) {
					t.Fatal("no orphan scan after the driver was ready")
				}
				time.Sleep(10 * time.Millisecond)
				m = scrape(t, url)
			}
			expect(t, m, "first scan",
				want{"berth_orphan_scan_success", map[string]string{"node": "n1"}, 1},
				want{"berth_pool_orphan_volumes", map[string]string{"pool": "local", "kind": "dir", "node": "n1"}, 0})
			if ts := value(t, m, "berth_orphan_scan_last_success_timestamp_seconds", map[string]string{"node": "n1"}); time.Since(time.Unix(int64(ts), 0)) > testWait {
				t.Errorf("last success at %v, want just now", ts)
			}
			if n := len(m["berth_pool_orphan_volumes"]); n != 1 {
				t.Errorf("%d berth_pool_orphan_volumes series, want local's alone (shared is not served)", n)
			}
		})
	}
}

// TestPVListerRefusesBadFlags: csi-driver pv-lister fails, naming the problem, on an
// invalid flag and outside a pod (no in-cluster configuration), and creates no
// socket then.
func TestPVListerRefusesBadFlags(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	sock := filepath.Join(testutil.ShortTempDir(t), "pv-lister.sock")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--driver-name", "-berth"}, "--driver-name"},
		{[]string{"--page-size", "0"}, "--page-size"},
		{[]string{"--page-size", "10001"}, "--page-size"},
		{[]string{"--logging-format", "xml"}, "--logging-format"},
		{[]string{"--endpoint", "tcp://127.0.0.1:1"}, "--endpoint"},
		{[]string{"--frobnicate"}, "frobnicate"},
		{[]string{"extra"}, "unexpected"},
		{[]string{"--endpoint", sock}, "in-cluster configuration"},
	} {
		err := driver.PVLister(context.Background(), tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("pv-lister %q: %v, want an error naming %s", tc.args, err, tc.want)
		}
		if _, err := os.Lstat(sock); err == nil {
			t.Fatalf("pv-lister %q left a socket", tc.args)
		}
	}
}

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
		Pools: func() []orphans.Pool { return driver.OrphanPools(e) }, Now: func() time.Time { return now }})
	m := metrics.New(e, "n1")
	m.AddOrphanScan(scan.Status)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	local := map[string]string{"pool": "local", "kind": "dir", "node": "n1"}
	node := map[string]string{"node": "n1"}

	if err := scan.Scan(ctx); err != nil {
		t.Fatal(err)
	}
	// kept has its PV, the inline volume none but is no orphan, the snapshot no volume.
	expect(t, scrape(t, srv.URL), "first scan", want{"berth_pool_volumes", local, 3}, want{"berth_pool_snapshots", local, 1},
		want{"berth_pool_orphan_volumes", local, 1}, want{"berth_orphan_scan_success", node, 1})

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
	expect(t, scrape(t, srv.URL), "restored, orphan deleted", want{"berth_pool_volumes", local, 3},
		want{"berth_pool_orphan_volumes", local, 0}, want{"berth_orphan_scan_success", node, 1})
	now = now.Add(orphans.Grace)
	if err := scan.Scan(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, scrape(t, srv.URL), "the restore's PV never came", want{"berth_pool_orphan_volumes", local, 1},
		want{"berth_orphan_scan_success", node, 1})

	// The listing refused: the figure stays, stale; the time is the last success's.
	kube.PrependReactor("list", "persistentvolumes", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("persistentvolumes is forbidden")
	})
	before := scan.Status().LastSuccess
	now = now.Add(5 * time.Minute)
	if err := scan.Scan(ctx); err == nil {
		t.Fatal("scan succeeded with the listing refused")
	}
	expect(t, scrape(t, srv.URL), "listing refused", want{"berth_pool_orphan_volumes", local, 1},
		want{"berth_orphan_scan_success", node, 0})
	if st := scan.Status(); !st.LastSuccess.Equal(before) {
		t.Errorf("last success %s after a failure, want %s", st.LastSuccess, before)
	}
}
