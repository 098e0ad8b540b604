package controller_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/pkg/controller"
	"github.com/berth-csi/berth/pkg/locks"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/iothrottle"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const testNode = "node-a"

// fixture is a controller serving an engine whose pools live under t.TempDir().
type fixture struct {
	srv    *controller.Server
	engine *storage.Engine
	locks  *locks.Set
}

// dirPool is a dir pool called name under base.
func dirPool(base, name string) storage.PoolConfig {
	return storage.PoolConfig{Name: name, Path: filepath.Join(base, name), Kind: storage.KindDir}
}

// noDeviceDir is a fresh directory on a filesystem with no block device (the tmpfs
// at /dev/shm): a dir pool there cannot have I/O limits, so it has no mutable
// parameter at all.
func noDeviceDir(t testing.TB) string {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		t.Skip("no tmpfs at /dev/shm")
	}
	dir, err := os.MkdirTemp("/dev/shm", "berth-test-")
	if err != nil {
		t.Skipf("cannot make a directory in /dev/shm: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// onDeviceDir is t.TempDir(), or skips the test when that lies on no block device.
func onDeviceDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := iothrottle.DeviceOf(dir); err != nil {
		t.Skipf("the test's directory lies on no block device: %v", err)
	}
	return dir
}

// newFixture starts an engine on pools (one dir pool "default" when none is given) and
// a controller for node testNode. The engine's goroutines stop at cleanup.
func newFixture(t testing.TB, pools ...storage.PoolConfig) *fixture {
	t.Helper()
	if len(pools) == 0 {
		pools = []storage.PoolConfig{dirPool(t.TempDir(), "default")}
	}
	e := testengine.StartAny(t, storage.Config{Pools: pools})
	l := &locks.Set{}
	return &fixture{srv: controller.New(e, testNode, l), engine: e, locks: l}
}

func mountCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

func blockCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

var rwo = mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)

// createReq is a valid request for a mount volume called name of size bytes.
func createReq(name string, size int64) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:               name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{rwo},
	}
}

// mustCreate creates a 1 MiB volume called name and returns it.
func (f *fixture) mustCreate(t testing.TB, name string) *csi.Volume {
	t.Helper()
	resp, err := f.srv.CreateVolume(context.Background(), createReq(name, 1<<20))
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return resp.GetVolume()
}

// dataPath is the data directory of the volume with this ID.
func (f *fixture) dataPath(t *testing.T, id string) string {
	t.Helper()
	p, r, err := f.engine.Volume(id)
	if err != nil {
		t.Fatalf("engine.Volume(%s): %v", id, err)
	}
	return p.DataPath(r.Hash())
}

// exists reports whether the engine still knows the volume.
func (f *fixture) exists(id string) bool {
	_, _, err := f.engine.Volume(id)
	return err == nil
}

func wantCode(t testing.TB, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("got code %s (err %v), want %s", got, err, want)
	}
}

// unknownID is a well-formed Berth volume ID of a volume that does not exist.
const unknownID = "b1-default-0123456789abcdef0123456789abcdef"
