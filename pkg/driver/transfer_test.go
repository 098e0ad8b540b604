package driver_test

import (
	"context"
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/fakehost"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/driver"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/transfer"
	"github.com/container-storage-interface/spec/lib/go/csi"
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
