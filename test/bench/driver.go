package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// driver is one csi-driver process serving a pool under the bench's root,
// and a client connection to it.
type driver struct {
	bin     string
	sock    string
	config  string
	kubelet string
	logPath string
	nodeID  string
	args    []string // more flags

	cmd    *exec.Cmd
	exited chan struct{} // closed once the process has been reaped
	err    error         // cmd.Wait's result, valid after exited is closed

	conn     *grpc.ClientConn
	identity csi.IdentityClient
	ctrl     csi.ControllerClient
	node     csi.NodeClient
}

// newDriver writes the pool configuration under root and returns a driver
// ready to start.
func newDriver(bin, root string) (*driver, error) {
	pool := filepath.Join(root, "pool")
	cfg := fmt.Sprintf(`pools:
- name: default
  path: %s
  kind: dir
  reservedBytes: 0
  overcommit: true
`, strconv.Quote(pool))
	return newDriverWith(bin, root, cfg)
}

// newDriverWith is newDriver with the given --config file content.
func newDriverWith(bin, root, cfg string) (*driver, error) {
	d := &driver{
		bin:     bin,
		sock:    filepath.Join(root, "csi.sock"),
		config:  filepath.Join(root, "pools.yaml"),
		kubelet: filepath.Join(root, "kubelet"),
		logPath: filepath.Join(root, "driver.log"),
		nodeID:  "bench-node",
	}
	if err := os.WriteFile(d.config, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(d.kubelet, 0o750); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *driver) poolPath() string { return filepath.Join(filepath.Dir(d.config), "pool") }

// start runs the driver and waits until Probe reports ready. It returns the
// time from exec to the first ready Probe.
func (d *driver) start(ctx context.Context) (time.Duration, error) {
	return d.startUntil(ctx, true)
}

// startUntil runs the driver and waits until Probe answers; with needReady,
// until it reports ready. A driver with a pool it cannot serve answers, but
// is never ready.
func (d *driver) startUntil(ctx context.Context, needReady bool) (time.Duration, error) {
	logf, err := os.OpenFile(d.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(d.bin, append([]string{
		"--endpoint", "unix://" + d.sock,
		"--node-id", d.nodeID,
		"--config", d.config,
		"--kubelet-dir", d.kubelet,
		"--mode", "all",
		"-v", "0"}, d.args...)...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Its own process group keeps a terminal's Ctrl-C for the bench, which
	// stops the driver itself; Pdeathsig stops it should the bench die.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}

	begin := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", d.bin, err)
	}
	d.cmd = cmd
	d.exited = make(chan struct{})
	go func() {
		d.err = cmd.Wait()
		close(d.exited)
	}()

	conn, err := grpc.NewClient("unix://"+d.sock, dialOptions()...)
	if err != nil {
		return 0, err
	}
	d.conn = conn
	d.identity = csi.NewIdentityClient(conn)
	d.ctrl = csi.NewControllerClient(conn)
	d.node = csi.NewNodeClient(conn)

	deadline := time.Now().Add(60 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := d.identity.Probe(pctx, &csi.ProbeRequest{})
		cancel()
		// An unset ready field means ready, by the spec.
		if err == nil && (!needReady || resp.GetReady() == nil || resp.GetReady().GetValue()) {
			return time.Since(begin), nil
		}
		select {
		case <-d.exited:
			return 0, fmt.Errorf("driver exited before ready (%v); log tail:\n%s", d.err, d.logTail(20))
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("driver not ready after 60s (last probe: %v); log tail:\n%s", err, d.logTail(20))
		}
	}
}

// running reports whether the process is alive.
func (d *driver) running() bool {
	if d.cmd == nil {
		return false
	}
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM to the driver's PID and waits for it to exit, then
// SIGKILL after grace. It returns how long the exit took and whether it
// was graceful.
func (d *driver) stop(grace time.Duration) (time.Duration, bool) {
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
	if !d.running() {
		return 0, true
	}
	begin := time.Now()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		return time.Since(begin), true
	case <-time.After(grace):
	}
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.exited
	return time.Since(begin), false
}

// rss returns the driver's resident set and its peak, from /proc/<pid>/status.
func (d *driver) rss() (cur, peak int64, err error) {
	if !d.running() {
		return 0, 0, errors.New("driver is not running")
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("parse %s %q: %w", key, value, err)
		}
		if key == "VmRSS" {
			cur = kb * 1024
		} else {
			peak = kb * 1024
		}
	}
	if cur == 0 {
		return 0, 0, errors.New("no VmRSS in /proc status")
	}
	return cur, peak, sc.Err()
}

// logTail returns the last n lines of the driver's log.
func (d *driver) logTail(n int) string {
	data, err := os.ReadFile(d.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// mountCapability is the capability every bench volume is created and
// published with.
var mountCapability = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

func createRequest(name string) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:               name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: 1 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{mountCapability},
		Parameters:         map[string]string{"pool": "default"},
	}
}

// controllerCaps returns the controller capabilities the driver advertises.
func (d *driver) controllerCaps(ctx context.Context) (map[csi.ControllerServiceCapability_RPC_Type]bool, error) {
	resp, err := d.ctrl.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		return nil, fmt.Errorf("ControllerGetCapabilities: %w", err)
	}
	caps := map[csi.ControllerServiceCapability_RPC_Type]bool{}
	for _, c := range resp.GetCapabilities() {
		caps[c.GetRpc().GetType()] = true
	}
	return caps, nil
}

// nodeCaps returns the node capabilities the driver advertises.
func (d *driver) nodeCaps(ctx context.Context) (map[csi.NodeServiceCapability_RPC_Type]bool, error) {
	resp, err := d.node.NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	if err != nil {
		return nil, fmt.Errorf("NodeGetCapabilities: %w", err)
	}
	caps := map[csi.NodeServiceCapability_RPC_Type]bool{}
	for _, c := range resp.GetCapabilities() {
		caps[c.GetRpc().GetType()] = true
	}
	return caps, nil
}

// countVolumes pages through ListVolumes and returns the number of volumes.
func (d *driver) countVolumes(ctx context.Context) (int, error) {
	n, token := 0, ""
	for range 1 << 20 {
		resp, err := d.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 1000, StartingToken: token})
		if err != nil {
			return 0, fmt.Errorf("ListVolumes: %w", err)
		}
		n += len(resp.GetEntries())
		if token = resp.GetNextToken(); token == "" {
			return n, nil
		}
	}
	return 0, errors.New("ListVolumes: next_token never ends")
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
