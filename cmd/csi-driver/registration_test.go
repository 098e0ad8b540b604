package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// TestKubeletRegistration plays the kubelet's plugin watcher against the real binary:
// the registration socket appears once the driver is ready, names the driver and its
// CSI socket, /healthz answers on 127.0.0.1, and SIGTERM removes the socket.
func TestKubeletRegistration(t *testing.T) {
	testutil.RequireRoot(t)
	bin := buildDriver(t)
	e := newEnv(t)
	registry := filepath.Join(e.kubelet, "plugins_registry")
	if err := os.MkdirAll(registry, 0o750); err != nil {
		t.Fatal(err)
	}
	port := testutil.FreePort(t)
	c := e.cmd(bin, "--health-port", strconv.Itoa(port), "--kubelet-registration-path", "/var/lib/kubelet/plugins/berth.csi.io/csi.sock")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	t.Cleanup(func() { _ = c.Process.Kill() })
	waitReady(t, e.sock)

	regSock := filepath.Join(registry, "berth.csi.io-reg.sock")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Lstat(regSock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("registration socket never appeared (--registration auto with plugins_registry present)")
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+regSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc := registerapi.NewRegistrationClient(conn)
	info, err := rc.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != "berth.csi.io" || info.Endpoint != "/var/lib/kubelet/plugins/berth.csi.io/csi.sock" {
		t.Errorf("GetInfo = %+v", info)
	}
	if _, err := rc.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}

	code, body := testutil.HTTPGet("http://127.0.0.1:" + strconv.Itoa(port) + "/healthz")
	if code != 200 || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz = %d %q, want 200 ok", code, body)
	}
	// The kubelet refusing the plugin makes the liveness probe fail.
	if _, err := rc.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{Error: "unsupported version"}); err != nil {
		t.Fatal(err)
	}
	if code, body := testutil.HTTPGet("http://127.0.0.1:" + strconv.Itoa(port) + "/healthz"); code != 503 || !strings.Contains(body, "unsupported version") {
		t.Errorf("/healthz after a refusal = %d %q, want 503 naming it", code, body)
	}

	if err := c.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("driver did not stop on SIGTERM")
	}
	if _, err := os.Lstat(regSock); !os.IsNotExist(err) {
		t.Errorf("registration socket left after a graceful stop: %v", err)
	}
}
