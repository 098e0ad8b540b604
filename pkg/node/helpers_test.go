package node_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/locks"
	"github.com/berth-csi/berth/pkg/mounter"
	"github.com/berth-csi/berth/pkg/node"
	"github.com/berth-csi/berth/pkg/storage"
)

const testNode = "node-a"

// fixture is a node service on an engine with one dir pool, both under base.
type fixture struct {
	srv     *node.Server
	engine  *storage.Engine
	locks   *locks.Set
	pool    *storage.Pool
	base    string // t.TempDir() holding the pool and the kubelet dir
	kubelet string
}

// newFixture builds a node service with a fresh pool and kubelet dir (with pods/).
func newFixture(t *testing.T) *fixture { return newFixtureTB(t) }

// newFixtureTB is newFixture for tests and benchmarks.
func newFixtureTB(t testing.TB) *fixture {
	t.Helper()
	base := t.TempDir()
	if err := os.MkdirAll(filepath.Join(base, "kubelet", "pods"), 0o750); err != nil {
		t.Fatal(err)
	}
	return startFixture(t, base, node.Config{NodeID: testNode, KubeletDir: filepath.Join(base, "kubelet")})
}

// startFixture starts a new engine on base/pool and a node service with cfg, as a
// restarted driver would.
func startFixture(t testing.TB, base string, cfg node.Config) *fixture {
	t.Helper()
	e := testengine.Start(t, storage.Config{Pools: []storage.PoolConfig{
		{Name: "default", Path: filepath.Join(base, "pool"), Kind: storage.KindDir,
			Ephemeral: storage.EphemeralConfig{Allowed: true}},
	}})
	l := &locks.Set{}
	srv, err := node.New(cfg, e, l)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{srv: srv, engine: e, locks: l, pool: e.DefaultPool(), base: base, kubelet: cfg.KubeletDir}
}

// createVolume creates a mount volume called name in the pool.
func (f *fixture) createVolume(t testing.TB, name string) *storage.Record {
	t.Helper()
	r, err := f.pool.Create(context.Background(), storage.CreateRequest{
		Name: name, RequiredBytes: 64 << 20, AccessType: storage.AccessMount,
	})
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return r
}

// dataPath is the data directory of the volume r records.
func (f *fixture) dataPath(r *storage.Record) string {
	return f.pool.DataPath(r.Hash())
}

// target returns kubelet/pods/<pod>/volumes/mount, with its parent created and a
// cleanup that detaches anything left mounted there.
func (f *fixture) target(t *testing.T, pod string) string {
	t.Helper()
	parent := filepath.Join(f.kubelet, "pods", pod, "volumes")
	if err := os.MkdirAll(parent, 0o750); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(parent, "mount")
	testutil.DetachOnCleanup(t, target)
	return target
}

func mountCap(mode csi.VolumeCapability_AccessMode_Mode, flags ...string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: flags}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

var rwo = mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)

func publishReq(id, target string, vc *csi.VolumeCapability, readOnly bool) *csi.NodePublishVolumeRequest {
	return &csi.NodePublishVolumeRequest{VolumeId: id, TargetPath: target, VolumeCapability: vc, Readonly: readOnly}
}

// publish publishes volume id at target and fails the test on error.
func (f *fixture) publish(t *testing.T, id, target string, vc *csi.VolumeCapability, readOnly bool) {
	t.Helper()
	_, err := f.srv.NodePublishVolume(context.Background(), publishReq(id, target, vc, readOnly))
	wantCode(t, err, codes.OK)
}

func (f *fixture) unpublish(id, target string) error {
	_, err := f.srv.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
	return err
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("got code %s (err %v), want %s", got, err, want)
	}
}

// isMounted reports whether path is a mount point; a missing path is not.
func isMounted(t *testing.T, path string) bool {
	t.Helper()
	m, err := mounter.IsMountPoint(path)
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	if err != nil {
		t.Fatalf("IsMountPoint(%s): %v", path, err)
	}
	return m
}

// mountsUnder lists the mount points at or below dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	all, err := mounter.All()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range all {
		if m.Mountpoint == dir || strings.HasPrefix(m.Mountpoint, dir+"/") {
			out = append(out, m.Mountpoint)
		}
	}
	slices.Sort(out)
	return out
}

// mountOptions returns the per-mount options of the mount at target.
func mountOptions(t *testing.T, target string) []string {
	t.Helper()
	m, err := mounter.At(target)
	if err != nil || m == nil {
		t.Fatalf("no mount at %s (err %v)", target, err)
	}
	return strings.Split(m.Options, ",")
}

// publications returns the engine's publication table entry of id as target->readOnly.
func publications(e *storage.Engine, id string) map[string]bool {
	out := map[string]bool{}
	for _, p := range e.Publications(id) {
		out[p.TargetPath] = p.ReadOnly
	}
	return out
}

// unknownID is a well-formed Berth volume ID of a volume that does not exist.
const unknownID = "b1-default-0123456789abcdef0123456789abcdef"
