package node_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/fakehost"
	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/pkg/locks"
	"github.com/berth-csi/berth/pkg/node"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

// fakeNode is a node service on one image pool over the fake host: the handlers and
// the engine's node side run for real, the mounts and loop devices are records, so
// no root is needed.
type fakeNode struct {
	host    *fakehost.Host
	srv     *node.Server
	pool    *storage.Pool
	kubelet string
}

func newFakeNode(t *testing.T) *fakeNode {
	t.Helper()
	base := t.TempDir()
	kubelet := filepath.Join(base, "kubelet")
	if err := os.MkdirAll(filepath.Join(kubelet, "pods"), 0o750); err != nil {
		t.Fatal(err)
	}
	fh := fakehost.New(filepath.Join(base, "dev"))
	e := testengine.StartWithHost(t, storage.Config{Pools: []storage.PoolConfig{
		{Name: "img", Path: filepath.Join(base, "pool"), Kind: storage.KindImage},
	}}, fh.Host())
	srv, err := node.New(node.Config{NodeID: testNode, KubeletDir: kubelet}, e, &locks.Set{})
	if err != nil {
		t.Fatal(err)
	}
	return &fakeNode{host: fh, srv: srv, pool: e.DefaultPool(), kubelet: kubelet}
}

// staged creates a 64 MiB xfs volume called name and stages it; it returns the
// volume and its staging path.
func (f *fakeNode) staged(t *testing.T, name string) (*storage.Record, string) {
	t.Helper()
	r, err := f.pool.Create(context.Background(), storage.CreateRequest{
		Name: name, RequiredBytes: 64 << 20, AccessType: storage.AccessMount, FSType: "xfs",
	})
	if err != nil {
		t.Fatal(err)
	}
	staging := filepath.Join(f.kubelet, "staging-"+name)
	_, err = f.srv.NodeStageVolume(context.Background(), stageReq(r, staging))
	wantCode(t, err, codes.OK)
	return r, staging
}

func (f *fakeNode) expand(r *storage.Record, staging string, bytes int64) error {
	_, err := f.srv.NodeExpandVolume(context.Background(), &csi.NodeExpandVolumeRequest{
		VolumeId: r.ID, VolumePath: staging, StagingTargetPath: staging,
		CapacityRange: &csi.CapacityRange{RequiredBytes: bytes},
	})
	return err
}

// Only the volume is locked: while one expansion is held inside the engine (growing
// its filesystem), another volume's expansion goes through, and a second expansion
// of the held volume is Aborted at once.
func TestExpandLocksOnlyTheVolume(t *testing.T) {
	f := newFakeNode(t)
	held, heldStaging := f.staged(t, "held")
	other, otherStaging := f.staged(t, "other")
	entered, release := make(chan struct{}), make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	defer releaseOnce()
	f.host.SetHooks(fakehost.Hooks{GrowFS: func(_, mountPath string) error {
		if mountPath == heldStaging {
			close(entered)
			<-release
		}
		return nil
	}})
	done := make(chan error, 1)
	go func() { done <- f.expand(held, heldStaging, 96<<20) }()
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the first expansion never reached GrowFS")
	}

	for _, tc := range []struct {
		name     string
		r        *storage.Record
		staging  string
		wantCode codes.Code
	}{
		{"another volume", other, otherStaging, codes.OK},
		{"the same volume", held, heldStaging, codes.Aborted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantCode(t, f.expand(tc.r, tc.staging, 128<<20), tc.wantCode)
		})
	}

	releaseOnce()
	select {
	case err := <-done:
		wantCode(t, err, codes.OK)
	case <-time.After(30 * time.Second):
		t.Fatal("the held expansion did not finish once released")
	}
	for r, want := range map[*storage.Record]int64{held: 96 << 20, other: 128 << 20} {
		if fs, ok := f.host.Filesystem(f.pool.ImagePath(r.Hash())); !ok || fs.Size != want {
			t.Errorf("volume %s: filesystem %+v, want %d bytes", r.Name, fs, want)
		}
	}
}
