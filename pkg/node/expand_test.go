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

// TestExpandVolumePath: NodeExpandVolume grows a volume only at a volume_path where
// it is available on this node: one of its publications (what kubelet passes), or
// its staging path when the request names the same (older kubelets). Anything else
// is FailedPrecondition and grows nothing; an unknown volume is NotFound first, as
// csi-sanity asks, whatever its path.
func TestExpandVolumePath(t *testing.T) {
	f := newFakeNode(t)
	r, staging := f.staged(t, "pvc-path")
	other, otherStaging := f.staged(t, "pvc-other")
	pods := filepath.Join(f.kubelet, "pods")
	publish := func(r *storage.Record, staging, pod string) string {
		target := filepath.Join(pods, pod, "mount")
		if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
			t.Fatal(err)
		}
		_, err := f.srv.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{
			VolumeId: r.ID, StagingTargetPath: staging, TargetPath: target, VolumeCapability: capOf(r),
		})
		wantCode(t, err, codes.OK)
		return target
	}
	target := publish(r, staging, "pod-a")
	otherTarget := publish(other, otherStaging, "pod-b")
	if err := os.Symlink(pods, filepath.Join(f.kubelet, "link")); err != nil {
		t.Fatal(err)
	}
	size := r.CapacityBytes
	for _, tc := range []struct {
		name                string
		id                  string
		volumePath, staging string
		wantCode            codes.Code
	}{
		{"relative", r.ID, "pods/pod-a/mount", staging, codes.FailedPrecondition},
		{"outside the kubelet dir", r.ID, "/etc", staging, codes.FailedPrecondition},
		{"not clean", r.ID, filepath.Join(pods, "pod-a") + "/../pod-a/mount", staging, codes.FailedPrecondition},
		{"through a symlinked parent", r.ID, filepath.Join(f.kubelet, "link", "pod-a", "mount"), staging, codes.FailedPrecondition},
		{"another volume's publication", r.ID, otherTarget, staging, codes.FailedPrecondition},
		{"another volume's staging path", r.ID, otherStaging, "", codes.FailedPrecondition},
		{"a path that is nothing of it", r.ID, filepath.Join(pods, "pod-c", "mount"), staging, codes.FailedPrecondition},
		{"a staging path outside the kubelet dir", r.ID, "/etc", "/etc", codes.FailedPrecondition},
		{"an unknown volume", unknownID, "some/path", "", codes.NotFound},
		{"its publication", r.ID, target, "", codes.OK},
		{"its staging path", r.ID, staging, staging, codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			size += 4 << 20
			_, err := f.srv.NodeExpandVolume(context.Background(), &csi.NodeExpandVolumeRequest{
				VolumeId: tc.id, VolumePath: tc.volumePath, StagingTargetPath: tc.staging,
				CapacityRange: &csi.CapacityRange{RequiredBytes: size},
			})
			wantCode(t, err, tc.wantCode)
			got, _ := f.pool.Get(r.Hash())
			if grown := got.CapacityBytes == size; grown != (tc.wantCode == codes.OK) {
				t.Fatalf("capacity %d after the expansion to %d: grown %t", got.CapacityBytes, size, grown)
			}
			if tc.wantCode != codes.OK {
				size = got.CapacityBytes
			}
		})
	}
}

// TestExpandGrowsOnlyItsOwnFilesystem: the filesystem grown is the one mounted at
// the staging path, so that path must hold the volume's own: another volume's
// staging path is FailedPrecondition, and nothing is grown there.
func TestExpandGrowsOnlyItsOwnFilesystem(t *testing.T) {
	f := newFakeNode(t)
	r, _ := f.staged(t, "pvc-grown")
	_, otherStaging := f.staged(t, "pvc-other")
	var grownAt []string
	f.host.SetHooks(fakehost.Hooks{GrowFS: func(_, mountPath string) error {
		grownAt = append(grownAt, mountPath)
		return nil
	}})
	_, err := f.srv.NodeExpandVolume(context.Background(), &csi.NodeExpandVolumeRequest{
		VolumeId: r.ID, VolumePath: otherStaging, StagingTargetPath: otherStaging,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 96 << 20},
	})
	wantCode(t, err, codes.FailedPrecondition)
	if len(grownAt) != 0 {
		t.Fatalf("filesystems grown at %v, want none", grownAt)
	}
}
