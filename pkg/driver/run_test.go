package driver_test

import (
	"context"
	"errors"
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
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// testWait bounds every wait here; it guards against deadlock and asserts no timing.
const testWait = 30 * time.Second

// TestNotServedBeforeReconciled: while start-up reconciliation runs (held here in the
// fake host's mount-table read), every call but the Identity service's answers
// Unavailable, and the volume a DeleteVolume names is still there afterwards; once
// reconciliation ends, the same calls are served.
func TestNotServedBeforeReconciled(t *testing.T) {
	base := t.TempDir()
	pool := storage.PoolConfig{Name: "default", Path: filepath.Join(base, "pool"), Kind: storage.KindDir}
	kubelet := filepath.Join(base, "kubelet")
	if err := os.MkdirAll(kubelet, 0o750); err != nil {
		t.Fatal(err)
	}
	// A volume made by an earlier run of the driver.
	prev, err := storage.New(storage.Config{Pools: []storage.PoolConfig{pool}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := prev.Start(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := prev.DefaultPool().Create(ctx, storage.CreateRequest{Name: "pvc-1", RequiredBytes: 1 << 20, AccessType: storage.AccessMount})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	prev.Wait()

	host := fakehost.New(t.TempDir())
	hold, held := make(chan struct{}), make(chan struct{}, 1)
	host.SetHooks(fakehost.Hooks{All: func() error {
		select {
		case held <- struct{}{}:
		default:
		}
		<-hold
		return nil
	}})
	sock := filepath.Join(testutil.ShortTempDir(t), "csi.sock")
	conn := startDriver(t, driver.Options{
		Endpoint: sock, NodeID: "n1", DriverName: "berth.csi.io", Mode: driver.ModeAll,
		Config: storage.Config{Pools: []storage.PoolConfig{pool}}, KubeletDir: kubelet, Host: host.Host(),
	})
	select {
	case <-held:
	case <-time.After(testWait):
		t.Fatal("reconciliation never read the mount table")
	}
	ctrl, node, ident := csi.NewControllerClient(conn), csi.NewNodeClient(conn), csi.NewIdentityClient(conn)
	call := context.Background()
	if _, err := ctrl.DeleteVolume(call, &csi.DeleteVolumeRequest{VolumeId: r.ID}); status.Code(err) != codes.Unavailable {
		t.Errorf("DeleteVolume during reconciliation: %v, want Unavailable", err)
	}
	if _, err := node.NodeUnpublishVolume(call, &csi.NodeUnpublishVolumeRequest{VolumeId: r.ID, TargetPath: filepath.Join(kubelet, "t")}); status.Code(err) != codes.Unavailable {
		t.Errorf("NodeUnpublishVolume during reconciliation: %v, want Unavailable", err)
	}
	if _, err := ctrl.ControllerGetCapabilities(call, &csi.ControllerGetCapabilitiesRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("ControllerGetCapabilities during reconciliation: %v, want Unavailable", err)
	}
	if resp, err := ident.Probe(call, &csi.ProbeRequest{}); err != nil || resp.GetReady().GetValue() {
		t.Errorf("Probe during reconciliation: %v, %v; want not ready", resp, err)
	}
	if _, err := os.Stat(filepath.Join(pool.Path, "volumes", r.Hash())); err != nil {
		t.Errorf("volume touched by a refused deletion: %v", err)
	}

	close(hold)
	waitProbe(t, ident)
	if _, err := ctrl.DeleteVolume(call, &csi.DeleteVolumeRequest{VolumeId: r.ID}); err != nil {
		t.Errorf("DeleteVolume once ready: %v", err)
	}
	if _, err := os.Stat(filepath.Join(pool.Path, "volumes", r.Hash())); !os.IsNotExist(err) {
		t.Errorf("volume still there after its deletion once ready: %v", err)
	}
}

// startDriver runs the driver until the test ends and returns a client of its socket.
func startDriver(t *testing.T, o driver.Options) *grpc.ClientConn {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- driver.Run(ctx, o) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("driver: %v", err)
			}
		case <-time.After(testWait):
			t.Error("driver did not stop")
		}
	})
	deadline := time.Now().Add(testWait)
	for {
		if _, err := os.Stat(o.Endpoint); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("driver socket never appeared")
		}
		time.Sleep(5 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+o.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// waitProbe waits until Probe answers ready.
func waitProbe(t *testing.T, ident csi.IdentityClient) {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for {
		resp, err := ident.Probe(context.Background(), &csi.ProbeRequest{})
		if err == nil && resp.GetReady().GetValue() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("never ready: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestOnePoolDownOthersServe: a shared pool whose filesystem is not mounted leaves the
// driver ready and alive (/healthz 200) with that pool reported on /readyz and its
// calls Unavailable, while the dir pool serves; once the filesystem is mounted the
// pool is tried again and served, without a restart.
func TestOnePoolDownOthersServe(t *testing.T) {
	base := t.TempDir()
	sharedPath := filepath.Join(base, "shared")
	if err := os.MkdirAll(sharedPath, 0o700); err != nil {
		t.Fatal(err)
	}
	kubelet := filepath.Join(base, "kubelet")
	if err := os.MkdirAll(kubelet, 0o750); err != nil {
		t.Fatal(err)
	}
	host := fakehost.New(t.TempDir())
	port := testutil.FreePort(t)
	sock := filepath.Join(testutil.ShortTempDir(t), "csi.sock")
	conn := startDriver(t, driver.Options{
		Endpoint: sock, NodeID: "n1", DriverName: "berth.csi.io", Mode: driver.ModeAll, KubeletDir: kubelet,
		Config: storage.Config{Pools: []storage.PoolConfig{
			{Name: "local", Path: filepath.Join(base, "local"), Kind: storage.KindDir},
			{Name: "shared", Path: sharedPath, Kind: storage.KindShared},
		}},
		Host: host.Host(), HealthPort: port, PoolRetry: 20 * time.Millisecond,
	})
	ctrl, ident := csi.NewControllerClient(conn), csi.NewIdentityClient(conn)
	waitProbe(t, ident)
	health := "http://127.0.0.1:" + strconv.Itoa(port)
	if code, body := testutil.HTTPGet(health + "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with one pool down = %d %q, want 200: liveness is the process's", code, body)
	}
	if code, body := testutil.HTTPGet(health + "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "shared") {
		t.Errorf("/readyz with one pool down = %d %q, want 503 naming the pool", code, body)
	}
	create := func(pool string) error {
		_, err := ctrl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
			Name: "pvc-" + pool, Parameters: map[string]string{"pool": pool},
			CapacityRange:      &csi.CapacityRange{RequiredBytes: 1 << 20},
			VolumeCapabilities: []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}, AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}},
		})
		return err
	}
	if err := create("local"); err != nil {
		t.Errorf("CreateVolume in the served pool: %v", err)
	}
	if err := create("shared"); status.Code(err) != codes.Unavailable {
		t.Errorf("CreateVolume in the pool down: %v, want Unavailable", err)
	}
	if _, err := os.ReadDir(filepath.Join(sharedPath, "volumes")); !os.IsNotExist(err) {
		t.Errorf("the pool down was laid out on the local disk: %v", err)
	}

	if err := host.MountFS("gluster.example:/gv0", sharedPath, "fuse.glusterfs"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(testWait)
	for code, body := testutil.HTTPGet(health + "/readyz"); code != http.StatusOK; code, body = testutil.HTTPGet(health + "/readyz") {
		if time.Now().After(deadline) {
			t.Fatalf("pool never served again: /readyz %d %q", code, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := create("shared"); err != nil {
		t.Errorf("CreateVolume once the pool is served again: %v", err)
	}
}

// TestSharedMountGoneUnderRunningDriver: an operator-mounted shared pool unmounted
// under a running driver (the path then shows the empty local directory beneath)
// makes its calls Unavailable, DeleteVolume included, and the pool reported on
// /readyz with 0 capacity, while the driver stays alive and the dir pool serves;
// nothing is written beneath. Mounted again, the pool is served without a restart
// and the deletion goes through.
func TestSharedMountGoneUnderRunningDriver(t *testing.T) {
	base := t.TempDir()
	sharedPath, remote := filepath.Join(base, "shared"), filepath.Join(base, "remote")
	kubelet := filepath.Join(base, "kubelet")
	for _, d := range []string{sharedPath, kubelet} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	host := fakehost.New(t.TempDir())
	if err := host.MountFS("gluster.example:/gv0", sharedPath, "fuse.glusterfs"); err != nil {
		t.Fatal(err)
	}
	port := testutil.FreePort(t)
	conn := startDriver(t, driver.Options{
		Endpoint: filepath.Join(testutil.ShortTempDir(t), "csi.sock"), NodeID: "n1", DriverName: "berth.csi.io",
		Mode: driver.ModeAll, KubeletDir: kubelet,
		Config: storage.Config{Pools: []storage.PoolConfig{
			{Name: "local", Path: filepath.Join(base, "local"), Kind: storage.KindDir},
			{Name: "shared", Path: sharedPath, Kind: storage.KindShared},
		}},
		Host: host.Host(), HealthPort: port, PoolRetry: 20 * time.Millisecond,
	})
	ctrl, ident := csi.NewControllerClient(conn), csi.NewIdentityClient(conn)
	waitProbe(t, ident)
	health := "http://127.0.0.1:" + strconv.Itoa(port)
	call := context.Background()
	create := func(pool string) (string, error) {
		resp, err := ctrl.CreateVolume(call, &csi.CreateVolumeRequest{
			Name: "pvc-" + pool, Parameters: map[string]string{"pool": pool},
			CapacityRange:      &csi.CapacityRange{RequiredBytes: 1 << 20},
			VolumeCapabilities: []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}, AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}},
		})
		return resp.GetVolume().GetVolumeId(), err
	}
	shared, err := create("shared")
	if err != nil {
		t.Fatal(err)
	}

	// Unmounted: what the filesystem holds goes with it.
	if err := host.Host().Mounts.Unmount(sharedPath); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(sharedPath, remote); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(sharedPath, 0o750); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.DeleteVolume(call, &csi.DeleteVolumeRequest{VolumeId: shared}); status.Code(err) != codes.Unavailable {
		t.Errorf("DeleteVolume with the pool unmounted: %v, want Unavailable", err)
	}
	if _, err := ctrl.ControllerGetVolume(call, &csi.ControllerGetVolumeRequest{VolumeId: shared}); status.Code(err) != codes.Unavailable {
		t.Errorf("ControllerGetVolume with the pool unmounted: %v, want Unavailable", err)
	}
	if resp, err := ctrl.GetCapacity(call, &csi.GetCapacityRequest{Parameters: map[string]string{"pool": "shared"}}); err != nil || resp.GetAvailableCapacity() != 0 {
		t.Errorf("GetCapacity with the pool unmounted: %v, %v; want 0", resp, err)
	}
	if code, body := testutil.HTTPGet(health + "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, sharedPath) {
		t.Errorf("/readyz with the pool unmounted = %d %q, want 503 naming %s", code, body, sharedPath)
	}
	if code, body := testutil.HTTPGet(health + "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with the pool unmounted = %d %q, want 200", code, body)
	}
	if local, err := create("local"); err != nil {
		t.Errorf("CreateVolume in the dir pool meanwhile: %v", err)
	} else if _, err := ctrl.DeleteVolume(call, &csi.DeleteVolumeRequest{VolumeId: local}); err != nil {
		t.Errorf("DeleteVolume in the dir pool meanwhile: %v", err)
	}
	if entries, err := os.ReadDir(sharedPath); err != nil || len(entries) > 0 {
		t.Errorf("written beneath the unmounted pool: %v, %v", entries, err)
	}

	// Mounted again.
	if err := os.Remove(sharedPath); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(remote, sharedPath); err != nil {
		t.Fatal(err)
	}
	if err := host.MountFS("gluster.example:/gv0", sharedPath, "fuse.glusterfs"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(testWait)
	for code, body := testutil.HTTPGet(health + "/readyz"); code != http.StatusOK; code, body = testutil.HTTPGet(health + "/readyz") {
		if time.Now().After(deadline) {
			t.Fatalf("pool never served again: /readyz %d %q", code, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := ctrl.DeleteVolume(call, &csi.DeleteVolumeRequest{VolumeId: shared}); err != nil {
		t.Errorf("DeleteVolume once mounted again: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(sharedPath, "volumes")); len(entries) > 0 {
		t.Errorf("volumes/ still holds %v after the deletion", entries)
	}
}

// TestAdoptRootOverKubeletDirRefused: a node driver whose adopt root contains the
// kubelet directory (a root such as /var would hand every pod's secret volumes to
// whoever may adopt) does not start; the error names the rule, and no socket exists.
func TestAdoptRootOverKubeletDirRefused(t *testing.T) {
	base := t.TempDir()
	kubelet := filepath.Join(base, "var", "lib", "kubelet")
	if err := os.MkdirAll(kubelet, 0o750); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(testutil.ShortTempDir(t), "csi.sock")
	for _, mode := range []string{driver.ModeNode, driver.ModeAll} {
		err := driver.Run(context.Background(), driver.Options{
			Endpoint: sock, NodeID: "n1", DriverName: "berth.csi.io", Mode: mode, KubeletDir: kubelet,
			Config: storage.Config{
				Pools:      []storage.PoolConfig{{Name: "default", Path: filepath.Join(base, "pool"), Kind: storage.KindDir}},
				AdoptRoots: []storage.AdoptRoot{{Path: filepath.Join(base, "var")}},
			},
			Host: fakehost.New(t.TempDir()).Host(),
		})
		if !errors.Is(err, storage.ErrInvalid) || !strings.Contains(err.Error(), "contains the kubelet directory") {
			t.Fatalf("mode %s: Run = %v, want the adopt root refused for containing the kubelet directory", mode, err)
		}
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Fatalf("mode %s: socket created by a refused start-up: %v", mode, err)
		}
	}
}
