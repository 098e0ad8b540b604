package driver_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/fakehost"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/driver"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/go-logr/logr"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// scrape reads the metrics endpoint into metric name -> series.
func scrape(t *testing.T, url string) map[string][]*model.Sample {
	t.Helper()
	code, body := testutil.HTTPGet(url)
	if code != http.StatusOK {
		t.Fatalf("GET %s = %d %q", url, code, body)
	}
	dec := expfmt.NewDecoder(strings.NewReader(body), expfmt.NewFormat(expfmt.TypeTextPlain))
	vec, err := expfmt.ExtractSamples(&expfmt.DecodeOptions{Timestamp: model.Now()}, decodeAll(t, dec)...)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]*model.Sample{}
	for _, s := range vec {
		name := string(s.Metric[model.MetricNameLabel])
		out[name] = append(out[name], s)
	}
	return out
}

func decodeAll(t *testing.T, dec expfmt.Decoder) []*dto.MetricFamily {
	t.Helper()
	var out []*dto.MetricFamily
	for {
		var mf dto.MetricFamily
		if err := dec.Decode(&mf); err != nil {
			return out
		}
		out = append(out, &mf)
	}
}

// value is the one series of name whose labels include want; the test fails when
// there is none or several.
func value(t *testing.T, m map[string][]*model.Sample, name string, want map[string]string) float64 {
	t.Helper()
	var found []float64
	for _, s := range m[name] {
		ok := true
		for k, v := range want {
			if string(s.Metric[model.LabelName(k)]) != v {
				ok = false
			}
		}
		if ok {
			found = append(found, float64(s.Value))
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s%v: %d series, want 1", name, want, len(found))
	}
	return found[0]
}

// want is a series' expected value.
type want struct {
	name   string
	labels map[string]string
	value  float64
}

// expect checks the scraped values of a step.
func expect(t *testing.T, m map[string][]*model.Sample, step string, wants ...want) {
	t.Helper()
	for _, w := range wants {
		if v := value(t, m, w.name, w.labels); v != w.value {
			t.Errorf("%s: %s%v = %v, want %v", step, w.name, w.labels, v, w.value)
		}
	}
}

// absent checks that a step scraped no series of these names.
func absent(t *testing.T, m map[string][]*model.Sample, step string, names ...string) {
	t.Helper()
	for _, name := range names {
		if n := len(m[name]); n != 0 {
			t.Errorf("%s: %d series of %s, want none", step, n, name)
		}
	}
}

// captureLog sends klog's lines, at verbosity 5, to a JSON handler (the
// --logging-format=json one) until the test ends.
func captureLog(t *testing.T) func() []map[string]any {
	var mu sync.Mutex
	var buf bytes.Buffer
	h := slog.NewJSONHandler(lockedWriter{&mu, &buf}, &slog.HandlerOptions{Level: slog.Level(-128)})
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	_ = fs.Set("v", "5")
	klog.SetLogger(logr.FromSlogHandler(h))
	t.Cleanup(func() { _ = fs.Set("v", "0"); klog.ClearLogger() })
	return func() []map[string]any {
		mu.Lock()
		defer mu.Unlock()
		var lines []map[string]any
		sc := bufio.NewScanner(bytes.NewReader(buf.Bytes()))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var l map[string]any
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
			}
			lines = append(lines, l)
		}
		return lines
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

// TestMetricsAndLogsFollowAClaim runs the driver with --metrics-address and its log
// in JSON, and drives a claim's life through it: create, publish, snapshot, a
// restore from the snapshot, unpublish, delete and the purge, with a second pool
// down. After each step the scraped figures are the engine's, and every log line of
// the mutating calls carries the request ID, the volume ID and the claim.
func TestMetricsAndLogsFollowAClaim(t *testing.T) {
	lines := captureLog(t)
	base := t.TempDir()
	kubelet := filepath.Join(base, "kubelet")
	if err := os.MkdirAll(filepath.Join(kubelet, "pods"), 0o750); err != nil {
		t.Fatal(err)
	}
	sharedPath := filepath.Join(base, "shared")
	if err := os.MkdirAll(sharedPath, 0o700); err != nil {
		t.Fatal(err)
	}
	port := testutil.FreePort(t)
	url := "http://127.0.0.1:" + strconv.Itoa(port) + "/metrics"
	conn := startDriver(t, driver.Options{
		Endpoint: filepath.Join(testutil.ShortTempDir(t), "csi.sock"), NodeID: "n1", DriverName: "berth.csi.io",
		Mode: driver.ModeAll, KubeletDir: kubelet, Host: fakehost.New(t.TempDir()).Host(),
		Config: storage.Config{Pools: []storage.PoolConfig{
			{Name: "local", Path: filepath.Join(base, "local"), Kind: storage.KindDir},
			{Name: "shared", Path: sharedPath, Kind: storage.KindShared},
		}},
		PoolRetry: time.Hour, MetricsAddress: "127.0.0.1:" + strconv.Itoa(port),
	})
	ctrl, node, ident := csi.NewControllerClient(conn), csi.NewNodeClient(conn), csi.NewIdentityClient(conn)
	waitProbe(t, ident)
	ctx := context.Background()
	local := map[string]string{"pool": "local", "kind": "dir", "node": "n1"}
	mount := []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}}

	shared := map[string]string{"pool": "shared", "kind": "shared", "node": "n1"}
	m := scrape(t, url)
	// The shared pool's filesystem is not mounted: that pool is down.
	expect(t, m, "at start",
		want{"berth_pool_served", local, 1},
		want{"berth_pool_served", shared, 0},
		want{"berth_pool_unserved", map[string]string{"pool": "shared", "reason": storage.ReasonMountFailed}, 1},
		want{"berth_pool_unserved", map[string]string{"pool": "shared", "reason": storage.ReasonCheckFailed}, 0},
		want{"berth_pool_volumes", local, 0})

	// Create, with the claim the provisioner names.
	vol, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: "pvc-1", VolumeCapabilities: mount, CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20},
		Parameters: map[string]string{"pool": "local", "csi.storage.k8s.io/pvc/namespace": "team-a", "csi.storage.k8s.io/pvc/name": "data"},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := vol.GetVolume().GetVolumeId()
	if _, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-2", VolumeCapabilities: mount,
		Parameters: map[string]string{"pool": "shared"}}); status.Code(err) != codes.Unavailable {
		t.Fatalf("CreateVolume in the pool down: %v, want Unavailable", err)
	}
	m = scrape(t, url)
	claim := map[string]string{"volume_id": id, "pool": "local", "namespace": "team-a", "persistentvolumeclaim": "data"}
	expect(t, m, "after create",
		want{"berth_pool_volumes", local, 1},
		want{"berth_pool_allocated_bytes", local, 8 << 20},
		want{"berth_volume_capacity_bytes", claim, 8 << 20},
		want{"berth_volume_healthy", claim, 1},
		want{"berth_operations_total", map[string]string{"method": "CreateVolume", "code": "OK"}, 1},
		want{"berth_operations_total", map[string]string{"method": "CreateVolume", "code": "Unavailable"}, 1},
		want{"berth_operation_duration_seconds_count", map[string]string{"method": "CreateVolume", "code": "OK"}, 1})
	absent(t, m, "after create, never measured", "berth_volume_used_bytes")
	for _, name := range []string{"berth_pool_capacity_bytes", "berth_pool_free_bytes", "berth_pool_used_bytes"} {
		if v := value(t, m, name, local); v <= 0 {
			t.Errorf("%s = %v, want > 0", name, v)
		}
	}

	// Stage, publish, and the stats call that measures it.
	staging := filepath.Join(kubelet, "plugins", "kubernetes.io", "csi", "berth.csi.io", "x", "globalmount")
	target := filepath.Join(kubelet, "pods", "p1", "volumes", "kubernetes.io~csi", "pv", "mount")
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		VolumeCapability: mount[0]}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: mount[0],
		VolumeContext: map[string]string{"csi.storage.k8s.io/pod.namespace": "team-a", "csi.storage.k8s.io/pod.name": "app-0"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target}); err != nil {
		t.Fatal(err)
	}
	m = scrape(t, url)
	if v := value(t, m, "berth_volume_used_bytes", claim); v < 0 {
		t.Errorf("berth_volume_used_bytes after NodeGetVolumeStats = %v", v)
	}
	if v := value(t, m, "berth_volume_inodes_used", claim); v < 1 {
		t.Errorf("berth_volume_inodes_used after NodeGetVolumeStats = %v, want >= 1 (the data directory)", v)
	}

	// Snapshot, and a volume restored from it.
	snap, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: id})
	if err != nil {
		t.Fatal(err)
	}
	var restored string
	deadline := time.Now().Add(testWait)
	for {
		resp, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-3", VolumeCapabilities: mount,
			CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20}, Parameters: map[string]string{"pool": "local"},
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
				Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}}})
		if err == nil {
			restored = resp.GetVolume().GetVolumeId()
			break
		}
		if c := status.Code(err); (c != codes.Aborted && c != codes.Unavailable && c != codes.FailedPrecondition) || time.Now().After(deadline) {
			t.Fatalf("restore: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	m = scrape(t, url)
	expect(t, m, "after the restore",
		want{"berth_pool_snapshots", local, 1},
		want{"berth_pool_volumes", local, 2},
		want{"berth_pool_volume_copies_in_progress", local, 0})
	absent(t, m, "after the restore", "berth_copy_done_bytes", "berth_copy_total_bytes")

	// Unpublish, unstage, delete: the trash empties, the series go.
	if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId()}); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{restored, id} {
		if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v}); err != nil {
			t.Fatal(err)
		}
	}
	for {
		m = scrape(t, url)
		if value(t, m, "berth_pool_trash_entries", local) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("trash never purged: %v entries", value(t, m, "berth_pool_trash_entries", local))
		}
		time.Sleep(10 * time.Millisecond)
	}
	expect(t, m, "after the deletes and the purge",
		want{"berth_pool_trash_bytes", local, 0},
		want{"berth_pool_volumes", local, 0},
		want{"berth_pool_allocated_bytes", local, 0})
	absent(t, m, "after the deletes", "berth_volume_capacity_bytes", "berth_volume_healthy", "berth_volume_used_bytes")

	// The log: every line of a mutating call carries its request ID, the volume ID
	// and, for the claim's volume, the claim.
	mutating := map[string]bool{"CreateVolume": true, "DeleteVolume": true, "NodeStageVolume": true, "NodePublishVolume": true,
		"NodeUnpublishVolume": true, "NodeUnstageVolume": true, "CreateSnapshot": true}
	seen := map[string]int{}
	if os.Getenv("BERTH_DUMP_LOG") != "" {
		for _, l := range lines() {
			t.Log(l)
		}
	}
	for _, l := range lines() {
		method, _ := l["method"].(string)
		short := method[strings.LastIndex(method, "/")+1:]
		if !mutating[short] {
			continue
		}
		seen[short]++
		if l["requestID"] == nil || l["volumeID"] == nil {
			t.Errorf("%s log line without requestID or volumeID: %v", short, l)
			continue
		}
		if l["volumeID"] == id && (l["claimNamespace"] != "team-a" || l["claimName"] != "data") {
			t.Errorf("%s log line of the claim's volume without the claim: %v", short, l)
		}
	}
	for m := range mutating {
		if seen[m] == 0 {
			t.Errorf("no log line of %s", m)
		}
	}
}
