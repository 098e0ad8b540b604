package crash

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// driverBinary returns $BERTH_BIN, or builds the driver into a temporary
// directory.
func driverBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("BERTH_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go tool to build the driver (%v): set BERTH_BIN", err)
	}
	bin := filepath.Join(t.TempDir(), "csi-driver")
	cmd := exec.CommandContext(t.Context(), goTool, "build", "-o", bin, "github.com/berth-csi/berth/cmd/csi-driver")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build the driver: %v\n%s", err, out)
	}
	return bin
}

// site is where a driver runs: its pool, kubelet directory, socket and log.
// It outlives each driver process, as a node's disk outlives a pod.
type site struct {
	bin     string
	pool    string
	config  string
	kubelet string
	sock    string
	logPath string
	tmp     string   // the driver's TMPDIR
	args    []string // further driver flags
}

func newSite(t *testing.T, bin string) *site {
	return newSiteWith(t, bin, "default", "dir")
}

// newSiteWith makes a site whose one pool, name, is of kind; its clean-up shows
// the driver's log tail when the test failed.
func newSiteWith(t *testing.T, bin, name, kind string) *site {
	t.Helper()
	dir := t.TempDir()
	s := &site{
		bin:     bin,
		pool:    filepath.Join(dir, "pool"),
		config:  filepath.Join(dir, "pools.yaml"),
		kubelet: filepath.Join(dir, "kubelet"),
		sock:    filepath.Join(dir, "csi.sock"),
		logPath: filepath.Join(dir, "driver.log"),
		tmp:     filepath.Join(dir, "tmp"),
	}
	if err := os.Mkdir(s.tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("pools:\n- name: %s\n  path: %s\n  kind: %s\n  reservedBytes: 0\n  overcommit: true\n",
		name, strconv.Quote(s.pool), kind)
	if err := os.WriteFile(s.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(s.kubelet, 0o750); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("driver log tail:\n%s", s.logTail(60))
		}
	})
	return s
}

func (s *site) logTail(n int) string {
	data, err := os.ReadFile(s.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// proc is one running driver and a connection to it.
type proc struct {
	site   *site
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // valid once exited is closed

	conn     *grpc.ClientConn
	identity csi.IdentityClient
	ctrl     csi.ControllerClient
}

// start runs the driver on the site and waits until Probe reports ready.
func (s *site) start(t *testing.T) *proc {
	t.Helper()
	p := s.launch(t)
	p.waitReady(t)
	return p
}

// launch runs the driver on the site without waiting for it. t.Cleanup
// kills it by PID if it is still running.
func (s *site) launch(t *testing.T) *proc {
	t.Helper()
	logf, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== test: start %s\n", time.Now().Format(time.RFC3339Nano))
	args := append([]string{
		"--endpoint", "unix://" + s.sock,
		"--node-id", "crash-node",
		"--config", s.config,
		"--kubelet-dir", s.kubelet,
		"--mode", "all",
		"-v", "2"}, s.args...)
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// mount-utils makes a directory in TMPDIR at start (to learn how umount
	// reports a path that is not mounted) and removes it on return; a SIGKILL in
	// between would leave it in the machine's /tmp.
	cmd.Env = append(os.Environ(), "TMPDIR="+s.tmp)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", s.bin, err)
	}
	p := &proc{site: s, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(p.kill)

	conn, err := grpc.NewClient("unix://"+s.sock, dialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	p.conn = conn
	p.identity = csi.NewIdentityClient(conn)
	p.ctrl = csi.NewControllerClient(conn)
	return p
}

// waitReady polls Probe until the driver reports ready (an unset ready
// field means ready, by the spec).
func (p *proc) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		resp, err := p.identity.Probe(ctx, &csi.ProbeRequest{})
		cancel()
		if err == nil && (resp.GetReady() == nil || resp.GetReady().GetValue()) {
			return
		}
		select {
		case <-p.exited:
			t.Fatalf("driver exited before ready: %v", p.err)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("driver not ready 30s after start; last Probe: ready=%v err=%v", resp.GetReady(), err)
		}
	}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// kill sends SIGKILL to the driver's PID, waits for it, and closes the
// connection, failing the calls still in flight.
func (p *proc) kill() {
	select {
	case <-p.exited:
	default:
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
	}
	if p.conn != nil {
		p.conn.Close()
	}
}

// stop sends SIGTERM and reports whether the driver exited within grace;
// if not, it is killed.
func (p *proc) stop(grace time.Duration) bool {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		p.conn.Close()
		return true
	case <-time.After(grace):
		p.kill()
		return false
	}
}

// children lists the live processes whose parent is the driver, as
// "pid (comm)".
func (p *proc) children() ([]string, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var kids []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		ppid, comm, ok := parseStat(string(data))
		if ok && ppid == p.pid() {
			kids = append(kids, e.Name()+" "+comm)
		}
	}
	return kids, nil
}

// parseStat returns the parent PID and the command name from the text of
// /proc/<pid>/stat: "pid (comm) state ppid ...". comm may itself hold
// spaces and parentheses, so it ends at the last ')'.
func parseStat(stat string) (ppid int, comm string, ok bool) {
	open, closing := strings.IndexByte(stat, '('), strings.LastIndexByte(stat, ')')
	if open < 0 || closing < open {
		return 0, "", false
	}
	fields := strings.Fields(stat[closing+1:])
	if len(fields) < 2 {
		return 0, "", false
	}
	ppid, err := strconv.Atoi(fields[1])
	if err != nil {
		return 0, "", false
	}
	return ppid, stat[open : closing+1], true
}

func TestParseStat(t *testing.T) {
	cases := []struct {
		name     string
		stat     string
		wantPPID int
		wantComm string
		wantOK   bool
	}{
		{name: "plain", stat: "42 (mount) S 7 42 42 0 -1", wantPPID: 7, wantComm: "(mount)", wantOK: true},
		{name: "comm with spaces and parens", stat: "42 (a (b) c) R 9 1 1", wantPPID: 9, wantComm: "(a (b) c)", wantOK: true},
		{name: "truncated", stat: "42 (x) S", wantOK: false},
		{name: "garbage", stat: "nonsense", wantOK: false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ppid, comm, ok := parseStat(tc.stat)
			if ok != tc.wantOK || (ok && (ppid != tc.wantPPID || comm != tc.wantComm)) {
				t.Errorf("parseStat(%q) = %d, %q, %v; want %d, %q, %v", tc.stat, ppid, comm, ok, tc.wantPPID, tc.wantComm, tc.wantOK)
			}
		})
	}
}

// dialOptions retry a socket that is not there yet every few milliseconds,
// not after gRPC's default one-second backoff, so that readiness is seen
// when it happens.
func dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}),
	}
}
