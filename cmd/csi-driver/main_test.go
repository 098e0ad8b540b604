package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// buildDriver compiles the binary once per test run.
func buildDriver(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "csi-driver")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

type env struct{ dir, sock, cfg, kubelet string }

func newEnv(t *testing.T) env {
	dir := testutil.ShortTempDir(t)
	e := env{dir: dir, sock: filepath.Join(dir, "csi.sock"), cfg: filepath.Join(dir, "pools.yaml"), kubelet: filepath.Join(dir, "kubelet")}
	if err := os.MkdirAll(e.kubelet, 0o750); err != nil {
		t.Fatal(err)
	}
	pools := "pools:\n- name: default\n  path: " + filepath.Join(dir, "pool") + "\n  kind: dir\n"
	if err := os.WriteFile(e.cfg, []byte(pools), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e env) cmd(bin string, extra ...string) *exec.Cmd {
	args := append([]string{"--endpoint", "unix://" + e.sock, "--node-id", "n1", "--config", e.cfg, "--kubelet-dir", e.kubelet}, extra...)
	return exec.Command(bin, args...)
}

func TestDriverProcess(t *testing.T) {
	testutil.RequireRoot(t)
	bin := buildDriver(t)

	t.Run("invalid configuration exits non-zero naming the problem", func(t *testing.T) {
		e := newEnv(t)
		var stderr bytes.Buffer
		c := e.cmd(bin, "--mode", "sideways")
		c.Stderr = &stderr
		err := c.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() == 0 {
			t.Fatalf("exit %v, want non-zero", err)
		}
		if !strings.Contains(stderr.String(), "--mode") {
			t.Errorf("stderr %q does not name --mode", stderr.String())
		}
	})

	t.Run("refuses a regular file at the endpoint and leaves it", func(t *testing.T) {
		e := newEnv(t)
		if err := os.WriteFile(e.sock, []byte("precious"), 0o600); err != nil {
			t.Fatal(err)
		}
		c := e.cmd(bin)
		if err := c.Run(); err == nil {
			t.Fatal("driver started over a regular file")
		}
		if b, err := os.ReadFile(e.sock); err != nil || string(b) != "precious" {
			t.Fatalf("file at endpoint changed: %q %v", b, err)
		}
	})

	for _, umask := range []int{0, 0o077} {
		t.Run("socket 0660, ready, graceful SIGTERM, umask "+strings.TrimPrefix(os.FileMode(umask).String(), "-"), func(t *testing.T) {
			e := newEnv(t)
			old := syscall.Umask(umask)
			c := e.cmd(bin)
			err := c.Start()
			syscall.Umask(old)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- c.Wait() }()
			t.Cleanup(func() {
				_ = c.Process.Kill()
			})
			waitReady(t, e.sock)
			fi, err := os.Stat(e.sock)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o660 || fi.Mode()&os.ModeSocket == 0 {
				t.Errorf("socket mode %v, want socket 0660", fi.Mode())
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
			if _, err := os.Lstat(e.sock); !os.IsNotExist(err) {
				t.Errorf("socket left behind after a graceful stop: %v", err)
			}
		})
	}
}

// waitReady polls Probe until the driver reports ready.
func waitReady(t *testing.T, sock string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(sock); err == nil {
			conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				resp, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
				cancel()
				conn.Close()
				if err == nil && resp.GetReady().GetValue() {
					return
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("driver never became ready")
}
