package testutil

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// GlusterHost is the loopback address the test glusterd listens on and names its
// bricks by: the gluster CLI refuses 127.0.0.1 and "localhost" in a brick, but any
// other 127/8 address reaches the loopback interface.
const GlusterHost = "127.0.0.2"

// glusterLock serialises the tests of every package that start a glusterd: there is
// one management port (24007) and one CLI socket per machine.
const glusterLock = "/run/berth-gluster-test.lock"

// Gluster is a started GlusterFS volume with one brick in a temporary directory.
type Gluster struct {
	Volume string // the GlusterFS volume's name
	Source string // what mount -t glusterfs takes: host:/volume
	Brick  string // the brick's directory: what the volume holds, on the server
	runDir string // the private run directory of the glusterd started here, if any
}

// StartGluster starts a glusterd on loopback with a private working directory (unless
// one already answers, which is then used), creates and starts a volume whose brick
// lies in a temporary directory, and undoes all of it at cleanup, pass or fail: the
// volume is stopped and deleted, the glusterd started here is stopped by its PID (as
// is the quota daemon it may have spawned). It needs glusterfs-server and
// glusterfs-client (hack/install-deps.sh installs them); it skips, with the reason,
// only when they are missing or glusterd cannot run on this machine.
func StartGluster(t testing.TB) *Gluster {
	t.Helper()
	RequireRoot(t)
	for _, bin := range []string{"glusterd", "gluster", "mount.glusterfs"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("GlusterFS is not installed (%s: %v); hack/install-deps.sh installs glusterfs-server and glusterfs-client", bin, err)
		}
	}
	lockGluster(t)
	g := &Gluster{Volume: "berth" + randomHex(4)}
	g.Source = GlusterHost + ":/" + g.Volume
	if _, err := glusterCLI("volume", "list"); err != nil {
		g.runDir = startGlusterd(t)
	}
	brick := filepath.Join(t.TempDir(), "brick")
	g.Brick = brick
	t.Cleanup(func() { g.deleteVolume(t, brick) })
	if out, err := glusterCLI("volume", "create", g.Volume, GlusterHost+":"+brick, "force"); err != nil {
		t.Fatalf("gluster volume create: %v\n%s", err, out)
	}
	if out, err := glusterCLI("volume", "start", g.Volume); err != nil {
		t.Fatalf("gluster volume start: %v\n%s", err, out)
	}
	return g
}

// Mount mounts the volume at dir (created if missing) with mount -t glusterfs and
// unmounts it at cleanup, before the volume is deleted.
func (g *Gluster) Mount(t testing.TB, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	g.UnmountAtCleanup(t, dir)
	Run(t, "mount", "-t", "glusterfs", g.Source, dir)
}

// UnmountAtCleanup unmounts everything at or below dir when the test ends (before the
// volume is deleted, when called after StartGluster): for pools the code under test
// mounts itself.
func (g *Gluster) UnmountAtCleanup(t testing.TB, dir string) {
	t.Helper()
	t.Cleanup(func() { UnmountTree(t, dir) })
}

// ClientPID returns the PID of the GlusterFS FUSE client process serving the mount at
// dir, found by dir at the end of its command line.
func ClientPID(t testing.TB, dir string) int {
	t.Helper()
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		if len(args) > 1 && filepath.Base(args[0]) == "glusterfs" && args[len(args)-1] == dir {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	t.Fatalf("no glusterfs client process serves %s", dir)
	return 0
}

// QuotaLimit returns `gluster volume quota <vol> list <path>`: the limit set on path
// (inside the volume) and its usage; it fails the test when GlusterFS has none there.
func (g *Gluster) QuotaLimit(t testing.TB, path string) string {
	t.Helper()
	out, err := glusterCLI("volume", "quota", g.Volume, "list", path)
	if err != nil {
		t.Fatalf("gluster volume quota list %s: %v\n%s", path, err, out)
	}
	return string(out)
}

func (g *Gluster) deleteVolume(t testing.TB, brick string) {
	t.Helper()
	if out, err := glusterCLI("volume", "stop", g.Volume, "force"); err != nil && !bytes.Contains(out, []byte("does not exist")) {
		t.Errorf("gluster volume stop: %v\n%s", err, out)
	}
	if out, err := glusterCLI("volume", "delete", g.Volume); err != nil && !bytes.Contains(out, []byte("does not exist")) {
		t.Errorf("gluster volume delete: %v\n%s", err, out)
	}
	if g.runDir != "" {
		// Quotas start a daemon of glusterd's; it is ours to stop when glusterd is.
		killPIDFile(t, filepath.Join(g.runDir, "quotad", "quotad.pid"))
	}
	_ = os.Remove(filepath.Join("/var/log/glusterfs/bricks", strings.ReplaceAll(strings.TrimPrefix(brick, "/"), "/", "-")+".log"))
	leftovers, _ := filepath.Glob(filepath.Join("/var/run/gluster", g.Volume+"_quota_*"))
	for _, f := range leftovers {
		_ = os.Remove(f)
	}
}

// startGlusterd starts glusterd in the foreground with private working and run
// directories, bound to GlusterHost, and stops it by PID at cleanup.
func startGlusterd(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	wd, run := filepath.Join(dir, "state"), filepath.Join(dir, "run")
	for _, d := range []string{wd, run} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	logFile := filepath.Join(dir, "glusterd.log")
	cmd := exec.Command("glusterd", "-N",
		"--xlator-option", "management.working-directory="+wd,
		"--xlator-option", "management.run-directory="+run,
		"--xlator-option", "management.transport.socket.bind-address="+GlusterHost,
		"-l", logFile, "-p", filepath.Join(dir, "glusterd.pid"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Skipf("glusterd cannot run on this machine: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(unix.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			log, _ := os.ReadFile(logFile)
			t.Skipf("glusterd cannot run on this machine: it exited (%v):\n%s", err, tail(log, 2000))
		default:
		}
		if _, err := glusterCLI("volume", "list"); err == nil {
			return run
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logFile)
			t.Fatalf("glusterd did not answer within 30s:\n%s", tail(log, 2000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// lockGluster takes the machine-wide gluster test lock until the test ends.
func lockGluster(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile(glusterLock, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
}

func glusterCLI(args ...string) ([]byte, error) {
	cmd := exec.Command("gluster", append([]string{"--mode=script"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("gluster %s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}

func killPIDFile(t testing.TB, path string) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return
	}
	if err := unix.Kill(pid, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		t.Errorf("stop pid %d of %s: %v", pid, path, err)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
