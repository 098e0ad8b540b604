package driver_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/fakehost"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/driver"
	"github.com/berth-csi/berth/pkg/locate"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/transfer"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The node plugin serves its volumes on --transfer-address once ready: a peer
// whose certificate it minted from the same CA directory pulls a volume, a
// client without a certificate gets nothing, the rate limit holds the sender
// back, and a running transfer shows in the metrics.
func TestTransferChannelServesVolumes(t *testing.T) {
	base := t.TempDir()
	testutil.MkdirAll(t, filepath.Join(base, "kubelet", "pods"))
	caDir := t.TempDir()
	testutil.WriteCA(t, caDir, "berth transfer CA", true)
	addr := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	mport := testutil.FreePort(t)
	const rate = 256 << 10
	conn := startDriver(t, driver.Options{
		Endpoint: filepath.Join(testutil.ShortTempDir(t), "csi.sock"), NodeID: "n1", DriverName: "berth.csi.io",
		Mode: driver.ModeAll, KubeletDir: filepath.Join(base, "kubelet"), Host: fakehost.New(t.TempDir()).Host(),
		Config:    storage.Config{Pools: []storage.PoolConfig{{Name: "local", Path: filepath.Join(base, "local"), Kind: storage.KindDir}}},
		PoolRetry: time.Hour, MetricsAddress: "127.0.0.1:" + strconv.Itoa(mport),
		TransferAddress: addr, TransferCADir: caDir, TransferRateLimit: rate,
	})
	waitProbe(t, csi.NewIdentityClient(conn))
	vol, err := csi.NewControllerClient(conn).CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: "pvc-1", CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := vol.GetVolume().GetVolumeId()
	data, err := filepath.Glob(filepath.Join(base, "local", "volumes", "*", "data"))
	if err != nil || len(data) != 1 {
		t.Fatalf("the volume's data directory: %v %v", data, err)
	}
	sum := testutil.WriteRandom(t, filepath.Join(data[0], "blob"), rate) // a second at the limit

	peer, err := transfer.NewIssuer(caDir, "n2")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := peer.ClientTLS("n1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()

	anonymous := cfg.Clone()
	anonymous.Certificates = nil
	anonymous.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }
	if _, err := transfer.Pull(ctx, transfer.PullOptions{Addr: addr, TLS: anonymous, ID: id, Dest: filepath.Join(t.TempDir(), "copy"), Retries: -1}); !errors.Is(err, transfer.ErrRefused) {
		t.Errorf("a client without a certificate: %v, want refused", err)
	}

	dest := filepath.Join(t.TempDir(), "copy")
	prog := &transfer.Progress{}
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := transfer.Pull(ctx, transfer.PullOptions{Addr: addr, TLS: cfg, ID: id, Dest: dest, Progress: prog})
		done <- err
	}()
	// Under way: in the sender's metrics.
	url := "http://127.0.0.1:" + strconv.Itoa(mport) + "/metrics"
	for seen := false; !seen; {
		select {
		case err := <-done:
			t.Fatalf("the pull ended (%v) before the metrics showed it under way", err)
		case <-time.After(20 * time.Millisecond):
		}
		m := scrape(t, url)
		if len(m["berth_transfer_done_bytes"]) == 1 {
			expect(t, m, "during the pull", want{"berth_transfers_in_progress", map[string]string{"node": "n1", "direction": "send"}, 1})
			if s := m["berth_transfer_done_bytes"][0]; string(s.Metric["volume_id"]) != id {
				t.Errorf("transfer series %v, want volume %s", s.Metric, id)
			}
			seen = true
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The bucket's burst is 64 KiB (at least a twentieth of a second's worth):
	// the rest waits for it, so the copy cannot take less than (rate-64Ki)/rate s.
	if took, least := time.Since(start), time.Duration(float64(rate-64<<10)/rate*float64(time.Second)); took < least {
		t.Errorf("%d bytes at %d B/s took %s, less than the limit allows (%s)", rate, rate, took, least)
	}
	if got := testutil.SHA256File(t, filepath.Join(dest, "blob")); got != sum {
		t.Errorf("copy's hash %s, want %s", got, sum)
	}
	if fi, err := os.Stat(dest); err != nil || !fi.IsDir() {
		t.Errorf("destination: %v", err)
	}
	expect(t, scrape(t, url), "after the pull", want{"berth_transfers_in_progress", map[string]string{"node": "n1", "direction": "send"}, 0})
}

// A CA directory that holds no CA stops the driver at start-up, naming the flag.
func TestTransferChannelWithoutCA(t *testing.T) {
	base := t.TempDir()
	testutil.MkdirAll(t, filepath.Join(base, "kubelet", "pods"))
	err := driver.Run(context.Background(), driver.Options{
		Endpoint: filepath.Join(testutil.ShortTempDir(t), "csi.sock"), NodeID: "n1", DriverName: "berth.csi.io",
		Mode: driver.ModeNode, KubeletDir: filepath.Join(base, "kubelet"), Host: fakehost.New(t.TempDir()).Host(),
		Config:    storage.Config{Pools: []storage.PoolConfig{{Name: "local", Path: filepath.Join(base, "local"), Kind: storage.KindDir}}},
		PoolRetry: time.Hour, TransferAddress: "127.0.0.1:0", TransferCADir: t.TempDir(),
	})
	if err == nil || !strings.Contains(err.Error(), "--transfer-ca-dir") || !strings.Contains(err.Error(), "ca.crt") {
		t.Fatalf("Run without a CA: %v", err)
	}
}

// fixedLocator answers where each known ID lives.
type fixedLocator map[string]locate.Where

func (f fixedLocator) Locate(_ context.Context, id string) (locate.Where, error) {
	if w, ok := f[id]; ok {
		return w, nil
	}
	return locate.Where{}, fmt.Errorf("no PersistentVolume names %s: %w", id, locate.ErrNotFound)
}

// servePVLister serves l's GET /locate on a unix socket until the test ends, as
// the pv-lister container does.
func servePVLister(t *testing.T, l locate.Locator) string {
	t.Helper()
	sock := filepath.Join(testutil.ShortTempDir(t), "pv-lister.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	mux := http.NewServeMux()
	locate.ServeLocate(ctx, mux, l)
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { cancel(); srv.Close() })
	return sock
}

// Two node plugins, each with its own dir pool of the same name and the
// channel on its own address (127.0.0.1 and 127.0.0.2, one port, as the chart
// gives every node): a volume and a snapshot of node n1 are cloned and
// restored on n2, whose plugin pulls them from n1's; a source no node holds is
// NotFound, as the spec says for a missing content source.
// twoNodes starts node plugins n1 (127.0.0.1) and n2 (127.0.0.2), each with a pool
// "local" of kind, the channel on one port and a pv-lister answering from where.
func twoNodes(t *testing.T, kind string, where fixedLocator) (n1, n2 csi.ControllerClient, pool1, pool2 string) {
	t.Helper()
	p1, p2 := twoPlugins(t, kind, where)
	return p1.ctrl, p2.ctrl, p1.pool, p2.pool
}

// nodePlugin is one of twoPlugins: its controller and node services, its pool's
// directory and its kubelet directory.
type nodePlugin struct {
	ctrl          csi.ControllerClient
	node          csi.NodeClient
	ident         csi.IdentityClient
	meta          csi.SnapshotMetadataClient
	pool, kubelet string
}

// twoPlugins is twoNodes with each plugin's node service and kubelet directory.
func twoPlugins(t *testing.T, kind string, where fixedLocator) (n1, n2 nodePlugin) {
	t.Helper()
	return twoPluginsWith(t, kind, where, nil)
}

// twoPluginsWith is twoPlugins with more options: more(&o, ip) before each start.
func twoPluginsWith(t *testing.T, kind string, where fixedLocator, more func(o *driver.Options, ip string)) (n1, n2 nodePlugin) {
	t.Helper()
	testutil.RequireRoot(t)
	caDir := t.TempDir()
	testutil.WriteCA(t, caDir, "berth transfer CA", true)
	port := strconv.Itoa(testutil.FreePort(t))
	lister := servePVLister(t, where)
	start := func(node, ip string) nodePlugin {
		base := t.TempDir()
		testutil.MkdirAll(t, filepath.Join(base, "kubelet", "pods"))
		o := driver.Options{
			Endpoint: filepath.Join(testutil.ShortTempDir(t), "csi.sock"), NodeID: node, DriverName: "berth.csi.io",
			Mode: driver.ModeAll, KubeletDir: filepath.Join(base, "kubelet"), Host: fakehost.New(t.TempDir()).Host(),
			Config:    storage.Config{Pools: []storage.PoolConfig{{Name: "local", Path: filepath.Join(base, "local"), Kind: kind}}},
			PoolRetry: time.Hour, TransferAddress: net.JoinHostPort(ip, port), TransferCADir: caDir, PVListerEndpoint: lister,
		}
		if more != nil {
			more(&o, ip)
		}
		conn := startDriver(t, o)
		waitProbe(t, csi.NewIdentityClient(conn))
		return nodePlugin{ctrl: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn),
			ident: csi.NewIdentityClient(conn), meta: csi.NewSnapshotMetadataClient(conn),
			pool: filepath.Join(base, "local"), kubelet: filepath.Join(base, "kubelet")}
	}
	return start("n1", "127.0.0.1"), start("n2", "127.0.0.2")
}

var mountRWO = []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}}

func onNode(node string) *csi.TopologyRequirement {
	seg := []*csi.Topology{{Segments: map[string]string{storage.TopologyKey: node}}}
	return &csi.TopologyRequirement{Requisite: seg, Preferred: seg}
}

// createDone calls CreateVolume until it is not Aborted (a copy under way), as
// the provisioner does.
func createDone(t *testing.T, c csi.ControllerClient, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for {
		got, err := c.CreateVolume(context.Background(), req)
		if status.Code(err) != codes.Aborted || time.Now().After(deadline) {
			return got, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestCrossNodeRestoreThroughTheChannel(t *testing.T) {
	where := fixedLocator{}
	n1, n2, pool1, pool2 := twoNodes(t, storage.KindDir, where)
	ctx := context.Background()
	mount, topo := mountRWO, onNode
	vol, err := n1.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-src", VolumeCapabilities: mount,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20}, AccessibilityRequirements: topo("n1")})
	if err != nil {
		t.Fatal(err)
	}
	srcID := vol.GetVolume().GetVolumeId()
	data, err := filepath.Glob(filepath.Join(pool1, "volumes", "*", "data"))
	if err != nil || len(data) != 1 {
		t.Fatalf("the source's data directory: %v %v", data, err)
	}
	sum := testutil.WriteRandom(t, filepath.Join(data[0], "blob"), 3<<20)
	snap, err := n1.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: srcID})
	if err != nil {
		t.Fatal(err)
	}
	snapID := snap.GetSnapshot().GetSnapshotId()
	where[srcID] = locate.Where{Node: "n1", Address: "127.0.0.1"}
	where[snapID] = locate.Where{Node: "n1", Address: "127.0.0.1"}

	for _, tc := range []struct {
		name string
		src  *csi.VolumeContentSource
	}{
		{"clone", &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: srcID}}}},
		{"restore", &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snapID}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := &csi.CreateVolumeRequest{Name: "pvc-" + tc.name, VolumeCapabilities: mount, VolumeContentSource: tc.src,
				CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20}, AccessibilityRequirements: topo("n2")}
			got, err := createDone(t, n2, req)
			if err != nil {
				t.Fatalf("CreateVolume on n2: %v", err)
			}
			if seg := got.GetVolume().GetAccessibleTopology(); len(seg) != 1 || seg[0].GetSegments()[storage.TopologyKey] != "n2" {
				t.Errorf("accessible topology %v, want n2", seg)
			}
			pid, err := storage.ParseVolumeID(got.GetVolume().GetVolumeId())
			if err != nil {
				t.Fatal(err)
			}
			blob := filepath.Join(pool2, "volumes", pid.Hash, "data", "blob")
			if s := testutil.SHA256File(t, blob); s != sum {
				t.Errorf("%s on n2: hash %s, want %s", tc.name, s, sum)
			}
		})
	}

	_, err = n2.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-gone", VolumeCapabilities: mount,
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{
			SnapshotId: storage.SnapshotID("local", "gone")}}},
		AccessibilityRequirements: topo("n2")})
	if status.Code(err) != codes.NotFound {
		t.Errorf("a source no node holds: %v, want NotFound", err)
	}
}

// An image volume of n1 with an ext4 filesystem is cloned on n2 by a request
// that names no filesystem (a class without fsType): the pulled image, sparse,
// grown to the new capacity, and recorded as ext4, the source's; asked again,
// the same volume.
func TestCrossNodeCloneOfAnImage(t *testing.T) {
	where := fixedLocator{}
	n1, n2, pool1, pool2 := twoNodes(t, storage.KindImage, where)
	vol, err := n1.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "pvc-src", VolumeCapabilities: mountRWO,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20}, AccessibilityRequirements: onNode("n1"),
		Parameters: map[string]string{storage.ParamFSType: "ext4"}})
	if err != nil {
		t.Fatal(err)
	}
	srcID := vol.GetVolume().GetVolumeId()
	where[srcID] = locate.Where{Node: "n1", Address: "127.0.0.1"}
	images, err := filepath.Glob(filepath.Join(pool1, "volumes", "*", storage.ImageFile))
	if err != nil || len(images) != 1 {
		t.Fatalf("the source's image: %v %v", images, err)
	}
	f, err := os.OpenFile(images[0], os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	payload := []byte("written at 4 MiB into the image")
	if _, err := f.WriteAt(payload, 4<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()

	req := &csi.CreateVolumeRequest{Name: "pvc-clone", VolumeCapabilities: mountRWO, AccessibilityRequirements: onNode("n2"),
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20},
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: srcID}}}}
	got, err := createDone(t, n2, req)
	if err != nil {
		t.Fatalf("CreateVolume on n2: %v", err)
	}
	if fs := got.GetVolume().GetVolumeContext()[storage.ParamFSType]; fs != "" && fs != "ext4" {
		t.Errorf("volume context fsType %q, want the source's ext4", fs)
	}
	pid, err := storage.ParseVolumeID(got.GetVolume().GetVolumeId())
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(pool2, "volumes", pid.Hash)
	rec, err := os.ReadFile(filepath.Join(dir, "record.json"))
	if err != nil || !strings.Contains(string(rec), `"fsType": "ext4"`) {
		t.Errorf("record of the clone (%v): %s", err, rec)
	}
	img := filepath.Join(dir, storage.ImageFile)
	st := testutil.Lstat(t, img)
	if st.Size != 16<<20 || st.Blocks*512 > 1<<20 {
		t.Errorf("pulled image: %d bytes, %d allocated; want 16 MiB, sparse", st.Size, st.Blocks*512)
	}
	b := make([]byte, len(payload))
	if fh, err := os.Open(img); err != nil {
		t.Fatal(err)
	} else {
		_, err = fh.ReadAt(b, 4<<20)
		fh.Close()
		if err != nil || string(b) != string(payload) {
			t.Errorf("bytes at 4 MiB: %q (%v)", b, err)
		}
	}
	if again, err := n2.CreateVolume(context.Background(), req); err != nil || again.GetVolume().GetVolumeId() != got.GetVolume().GetVolumeId() {
		t.Errorf("asked again: %v", err)
	}
}
