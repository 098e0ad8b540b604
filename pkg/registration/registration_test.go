package registration

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// start runs a registrar the way the kubelet's plugin watcher finds one, and returns a
// client speaking to it as the kubelet does.
func start(t *testing.T) (*Registrar, registerapi.RegistrationClient, string, func() error) {
	t.Helper()
	dir := RegistryDir(testutil.ShortTempDir(t))
	sock := SocketPath(dir, "berth.csi.io")
	r, err := New("berth.csi.io", "/var/lib/kubelet/plugins/berth.csi.io/csi.sock", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	stop := sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("Run did not return after cancel")
		}
	})
	t.Cleanup(func() { _ = stop() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Lstat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("registration socket never appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return r, registerapi.NewRegistrationClient(conn), sock, stop
}

func TestSocketPath(t *testing.T) {
	if got := SocketPath(RegistryDir("/var/lib/kubelet"), "berth.csi.io"); got != "/var/lib/kubelet/plugins_registry/berth.csi.io-reg.sock" {
		t.Errorf("SocketPath = %q", got)
	}
}

func TestNewRefusesRelativeEndpoint(t *testing.T) {
	if _, err := New("berth.csi.io", "csi.sock", "/tmp/x-reg.sock"); err == nil {
		t.Error("relative endpoint accepted")
	}
}

func TestGetInfo(t *testing.T) {
	_, c, _, _ := start(t)
	info, err := c.GetInfo(context.Background(), &registerapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != "berth.csi.io" ||
		info.Endpoint != "/var/lib/kubelet/plugins/berth.csi.io/csi.sock" ||
		len(info.SupportedVersions) != 1 || info.SupportedVersions[0] != "1.0.0" {
		t.Errorf("GetInfo = %+v", info)
	}
}

func TestRegistrationStatus(t *testing.T) {
	tests := []struct {
		name        string
		statuses    []*registerapi.RegistrationStatus
		wantHealthy bool
		wantReg     bool
	}{
		{name: "not yet told", wantHealthy: true},
		{name: "accepted", statuses: []*registerapi.RegistrationStatus{{PluginRegistered: true}}, wantHealthy: true, wantReg: true},
		{name: "refused", statuses: []*registerapi.RegistrationStatus{{PluginRegistered: false, Error: "version mismatch"}}},
		{name: "refused then accepted", statuses: []*registerapi.RegistrationStatus{{Error: "x"}, {PluginRegistered: true}}, wantHealthy: true, wantReg: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, c, _, _ := start(t)
			for _, st := range tc.statuses {
				if _, err := c.NotifyRegistrationStatus(context.Background(), st); err != nil {
					t.Fatal(err)
				}
			}
			if err := r.Healthy(); (err == nil) != tc.wantHealthy {
				t.Errorf("Healthy() = %v, want healthy %v", err, tc.wantHealthy)
			}
			if r.Registered() != tc.wantReg {
				t.Errorf("Registered() = %v, want %v", r.Registered(), tc.wantReg)
			}
		})
	}
}

func TestNotifyNilStatus(t *testing.T) {
	r, err := New("berth.csi.io", "/csi.sock", "/nonexistent-reg.sock")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.NotifyRegistrationStatus(context.Background(), nil); status.Code(err) != codes.InvalidArgument {
		t.Errorf("code %v, want InvalidArgument", status.Code(err))
	}
}

func TestSocketGoneIsUnhealthy(t *testing.T) {
	r, _, sock, _ := start(t)
	if err := os.Remove(sock); err != nil {
		t.Fatal(err)
	}
	if err := r.Healthy(); err == nil {
		t.Error("healthy without a registration socket")
	}
}

func TestStopRemovesSocket(t *testing.T) {
	_, _, sock, stop := start(t)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("registration socket left after stop: %v", err)
	}
}

func TestRunRefusesLiveSocket(t *testing.T) {
	dir := testutil.ShortTempDir(t)
	sock := filepath.Join(dir, "berth.csi.io-reg.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	r, _ := New("berth.csi.io", "/csi.sock", sock)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.Run(ctx); err == nil {
		t.Error("Run took over a live socket")
	}
}
