package storage_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
)

// Single-node claims across nodes (nodeclaim.go). Each "node" is an engine and its
// node side with its own node ID and kubelet directory; on GlusterFS each has its own
// FUSE mount of the volume, as two hosts would. OFD locks belong to the open file,
// not the process, so two nodes in one test process exclude each other as two hosts
// do; a node plugin that dies is a child process (this test binary again) killed
// with SIGKILL, its mounts left in place as kubelet leaves them.

// claimEnv makes the pool configuration of each node: a GlusterFS mount of its own,
// or one local directory (a mount point, as a shared pool must be) for all.
type claimEnv struct {
	base string
	pool func(nodeID string) storage.PoolConfig
}

func claimEnvs(t *testing.T) map[string]func(*testing.T) *claimEnv {
	return map[string]func(*testing.T) *claimEnv{
		"local directory": func(t *testing.T) *claimEnv {
			base, shared := testutil.SharedDir(t)
			return &claimEnv{base: base, pool: func(string) storage.PoolConfig {
				return storage.PoolConfig{Name: "sh", Path: shared, Kind: storage.KindShared}
			}}
		},
		"GlusterFS": func(t *testing.T) *claimEnv {
			g := testutil.StartGluster(t)
			base := testutil.ShortTempDir(t)
			g.UnmountAtCleanup(t, base)
			return &claimEnv{base: base, pool: func(nodeID string) storage.PoolConfig {
				return storage.PoolConfig{Name: "sh", Path: filepath.Join(base, nodeID, "pool"), Kind: storage.KindShared,
					Source: g.Source, FSType: "glusterfs"}
			}}
		},
	}
}

// claimNode is one node's engine and node side.
type claimNode struct {
	id      string
	e       *storage.Engine
	n       *storage.Node
	kubelet string
}

// node starts a node called id (again, after a restart: same kubelet directory) that
// honours an orphaned claim for grace, and recovers its publications.
func (env *claimEnv) node(t *testing.T, id string, grace time.Duration) *claimNode {
	t.Helper()
	kubelet := filepath.Join(env.base, id, "kubelet")
	if err := os.MkdirAll(filepath.Join(kubelet, "pods"), 0o750); err != nil {
		t.Fatal(err)
	}
	c := &claimNode{id: id, kubelet: kubelet}
	c.e = testengine.StartWith(t, storage.Config{Pools: []storage.PoolConfig{env.pool(id)}}, testengine.Options{Before: func(e *storage.Engine) {
		n, err := e.Node(storage.NodeConfig{KubeletDir: kubelet, NodeID: id, ClaimGrace: grace})
		if err != nil {
			t.Fatal(err)
		}
		c.n = n
	}})
	if err := c.e.Unserved(); err != nil {
		t.Fatal(err)
	}
	if err := c.n.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *claimNode) create(t *testing.T, name string) string {
	t.Helper()
	r, err := c.e.DefaultPool().Create(context.Background(), storage.CreateRequest{Name: name, RequiredBytes: 16 << 20, AccessType: storage.AccessMount})
	if err != nil {
		t.Fatal(err)
	}
	return r.ID
}

func (c *claimNode) paths(id, pod string) (staging, target string) {
	return filepath.Join(c.kubelet, "pods", "staging-"+id[len(id)-8:]), filepath.Join(c.kubelet, "pods", pod)
}

func mode(m storage.AccessMode) storage.Capability {
	return storage.Capability{Access: storage.AccessMount, Mode: m}
}

func (c *claimNode) stage(id string, m storage.AccessMode) error {
	staging, _ := c.paths(id, "")
	return c.n.Stage(context.Background(), storage.StageRequest{VolumeID: id, StagingPath: staging, Capability: mode(m)})
}

func (c *claimNode) publish(id, pod string, m storage.AccessMode) error {
	staging, target := c.paths(id, pod)
	return c.n.Publish(context.Background(), storage.PublishRequest{VolumeID: id, StagingPath: staging, TargetPath: target, Capability: mode(m)})
}

// use stages and publishes a volume for pod.
func (c *claimNode) use(id, pod string, m storage.AccessMode) error {
	if err := c.stage(id, m); err != nil {
		return err
	}
	return c.publish(id, pod, m)
}

// release unpublishes pod's target and unstages the volume.
func (c *claimNode) release(t *testing.T, id string, pods ...string) {
	t.Helper()
	for _, pod := range pods {
		_, target := c.paths(id, pod)
		if err := c.n.Unpublish(context.Background(), id, target); err != nil {
			t.Fatal(err)
		}
	}
	staging, _ := c.paths(id, "")
	if err := c.n.Unstage(context.Background(), id, staging); err != nil {
		t.Fatal(err)
	}
}

// refused checks that err refuses the volume because node holder has it.
func refused(t *testing.T, err error, holder string) {
	t.Helper()
	if !errors.Is(err, storage.ErrPrecondition) {
		t.Fatalf("got %v, want ErrPrecondition", err)
	}
	if !strings.Contains(err.Error(), "on node "+holder) {
		t.Errorf("error %q does not name node %s", err, holder)
	}
}

// holderOf reads the claim record of a volume through node c's mount: that of the
// node that wrote it last (another GlusterFS client may show it a second late).
func holderOf(t *testing.T, c *claimNode, id string) string {
	t.Helper()
	pid, err := storage.ParseVolumeID(id)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(c.e.DefaultPool().VolumeDir(pid.Hash), "holder.json"))
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	var h struct{ NodeID string }
	if err := json.Unmarshal(data, &h); err != nil {
		t.Fatal(err)
	}
	return h.NodeID
}

func TestSingleNodeClaims(t *testing.T) {
	for name, setup := range claimEnvs(t) {
		t.Run(name, func(t *testing.T) {
			env := setup(t)
			a, b := env.node(t, "node-a", time.Hour), env.node(t, "node-b", time.Hour)

			t.Run("a publishes RWO: b's stage and publish are refused naming a", func(t *testing.T) {
				id := a.create(t, "pvc-rwo")
				if err := a.use(id, "pod-a", storage.SingleNodeWriter); err != nil {
					t.Fatal(err)
				}
				err := b.stage(id, storage.SingleNodeWriter)
				refused(t, err, "node-a")
				if !strings.Contains(err.Error(), "SINGLE_NODE_WRITER") || !strings.Contains(err.Error(), id) {
					t.Errorf("error %q names neither the mode nor the volume", err)
				}
				// Staged for a multi-node mode (never blocked), then published single-node.
				if err := b.stage(id, storage.MultiNodeMultiWriter); err != nil {
					t.Fatalf("multi-node stage on b: %v", err)
				}
				refused(t, b.publish(id, "pod-b", storage.SingleNodeWriter), "node-a")
				if got := holderOf(t, a, id); got != "node-a" {
					t.Errorf("holder %q, want node-a", got)
				}

				// Retries on a, and a second pod on a, are a's own business.
				if err := a.use(id, "pod-a", storage.SingleNodeWriter); err != nil {
					t.Errorf("same-node retry: %v", err)
				}
				if err := a.publish(id, "pod-a2", storage.SingleNodeWriter); err != nil {
					t.Errorf("second pod on a: %v", err)
				}

				a.release(t, id, "pod-a", "pod-a2")
				if got := holderOf(t, a, id); got != "" {
					t.Errorf("holder %q after a unstaged, want none", got)
				}
				if err := b.publish(id, "pod-b", storage.SingleNodeWriter); err != nil {
					t.Fatalf("b after a unstaged: %v", err)
				}
				refused(t, a.stage(id, storage.SingleNodeWriter), "node-b")
				b.release(t, id, "pod-b")
			})

			t.Run("every single-node mode is held; multi-node modes never are", func(t *testing.T) {
				for _, m := range []storage.AccessMode{storage.SingleNodeReaderOnly, storage.SingleNodeSingleWriter, storage.SingleNodeMultiWriter} {
					id := a.create(t, "pvc-"+strings.ToLower(strings.ReplaceAll(m.String(), "_", "-")))
					if err := a.use(id, "pod-a", m); err != nil {
						t.Fatal(err)
					}
					refused(t, b.stage(id, m), "node-a")
					a.release(t, id, "pod-a")
				}
				id := a.create(t, "pvc-rwx")
				for _, m := range []storage.AccessMode{storage.MultiNodeMultiWriter, storage.MultiNodeReaderOnly, storage.MultiNodeSingleWriter} {
					if err := a.use(id, "pod-a", storage.MultiNodeMultiWriter); err != nil {
						t.Fatal(err)
					}
					if err := b.use(id, "pod-b", m); err != nil {
						t.Errorf("%s on b while a has it: %v", m, err)
					}
					if got := holderOf(t, a, id); got != "" {
						t.Errorf("multi-node use left holder %q", got)
					}
					a.release(t, id, "pod-a")
					b.release(t, id, "pod-b")
				}
			})

			t.Run("two nodes staging at once: the lock lets exactly one through", func(t *testing.T) {
				id := a.create(t, "pvc-race")
				errs := make([]error, 2)
				var wg sync.WaitGroup
				for i, c := range []*claimNode{a, b} {
					wg.Go(func() { errs[i] = c.stage(id, storage.SingleNodeWriter) })
				}
				wg.Wait()
				won := 0
				for i, err := range errs {
					switch {
					case err == nil:
						won++
					case !errors.Is(err, storage.ErrPrecondition):
						t.Errorf("node %d: %v, want success or ErrPrecondition", i, err)
					}
				}
				if won != 1 {
					t.Fatalf("%d nodes staged it (%v), want 1", won, errs)
				}
				winner := []*claimNode{a, b}[0]
				if errs[0] != nil {
					winner = []*claimNode{a, b}[1]
				}
				if got := holderOf(t, winner, id); got != winner.id {
					t.Errorf("holder %q, want %s", got, winner.id)
				}
				winner.release(t, id)
			})

			t.Run("a's plugin dies and restarts: its claim holds, and is taken back", func(t *testing.T) {
				id := a.create(t, "pvc-restart")
				kill := env.holderProcess(t, a, id)
				kill()
				// The lock died with the process; the record and the mounts did not.
				refused(t, b.stage(id, storage.SingleNodeWriter), "node-a")
				restarted := env.node(t, "node-a", time.Hour)
				quick := env.node(t, "node-c", time.Nanosecond)
				refused(t, quick.stage(id, storage.SingleNodeWriter), "node-a")
				_, target := restarted.paths(id, "pod-a")
				if err := os.WriteFile(filepath.Join(target, "still"), []byte("here"), 0o600); err != nil {
					t.Fatalf("the pod's mount after the restart: %v", err)
				}
				restarted.release(t, id, "pod-a")
				if err := quick.use(id, "pod-c", storage.SingleNodeWriter); err != nil {
					t.Fatalf("after a unstaged: %v", err)
				}
				quick.release(t, id, "pod-c")
			})

			t.Run("a's plugin dies for good: after the grace, another node takes over", func(t *testing.T) {
				id := a.create(t, "pvc-gone")
				env.holderProcess(t, a, id)()
				quick := env.node(t, "node-d", time.Nanosecond)
				var err error
				// The process's lock is released when the filesystem closes its file, a
				// moment after the process exits.
				for range 50 {
					if err = quick.stage(id, storage.SingleNodeWriter); err == nil {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				if err != nil {
					t.Fatalf("takeover: %v", err)
				}
				if got := holderOf(t, quick, id); got != "node-d" {
					t.Errorf("holder %q, want node-d", got)
				}
				refused(t, b.stage(id, storage.SingleNodeWriter), "node-d")
				quick.release(t, id)
			})
		})
	}
}

// holderSpec is what the child process of holderProcess does.
type holderSpec struct {
	Pool             storage.PoolConfig
	NodeID, Kubelet  string
	VolumeID         string
	Staging, Target  string
	CapabilityAccess string
}

const holderEnv = "BERTH_TEST_CLAIM_HOLDER"

// holderProcess runs node c's plugin as a child process that stages and publishes
// volume id for pod-a with SINGLE_NODE_WRITER; it returns once the claim is held, and
// the function it returns kills the process (SIGKILL: no cleanup of its own).
func (env *claimEnv) holderProcess(t *testing.T, c *claimNode, id string) func() {
	t.Helper()
	staging, target := c.paths(id, "pod-a")
	spec, err := json.Marshal(holderSpec{Pool: env.pool(c.id), NodeID: c.id, Kubelet: c.kubelet, VolumeID: id, Staging: staging, Target: target})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestClaimHolderProcess$")
	cmd.Env = append(os.Environ(), holderEnv+"="+string(spec))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	kill := func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
	}
	t.Cleanup(kill)
	lines := bufio.NewScanner(out)
	for lines.Scan() {
		if lines.Text() == "claimed" {
			return kill
		}
	}
	kill()
	t.Fatalf("the holder process exited before claiming: %s", stderr.String())
	return nil
}

// TestClaimHolderProcess is the child process of holderProcess; it does nothing
// unless started by it.
func TestClaimHolderProcess(t *testing.T) {
	raw := os.Getenv(holderEnv)
	if raw == "" {
		t.Skip("the child process of TestSingleNodeClaims")
	}
	var s holderSpec
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	e, err := storage.New(storage.Config{Pools: []storage.PoolConfig{s.Pool}})
	if err != nil {
		t.Fatal(err)
	}
	n, err := e.Node(storage.NodeConfig{KubeletDir: s.Kubelet, NodeID: s.NodeID})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	c := storage.Capability{Access: storage.AccessMount, Mode: storage.SingleNodeWriter}
	if err := n.Stage(ctx, storage.StageRequest{VolumeID: s.VolumeID, StagingPath: s.Staging, Capability: c}); err != nil {
		t.Fatal(err)
	}
	if err := n.Publish(ctx, storage.PublishRequest{VolumeID: s.VolumeID, StagingPath: s.Staging, TargetPath: s.Target, Capability: c}); err != nil {
		t.Fatal(err)
	}
	fmt.Println("claimed")
	time.Sleep(time.Hour) // until killed
}
