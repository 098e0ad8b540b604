package driver_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/fakehost"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/driver"
	"github.com/berth-csi/berth/pkg/orphans"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/client-go/kubernetes/fake"
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
