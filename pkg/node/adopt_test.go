package node_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/controller"
	"github.com/berth-csi/berth/pkg/locks"
	"github.com/berth-csi/berth/pkg/node"
	"github.com/berth-csi/berth/pkg/storage"
)

// adoptFixture is a node service whose configuration allows adopting directories
// under base/srv; base/pool is its dir pool, base/outside is never allowed.
type adoptFixture struct {
	*fixture
	root, outside string
}

func newAdoptFixture(t *testing.T) *adoptFixture {
	t.Helper()
	return newAdoptFixtureWith(t, false)
}

// newAdoptFixtureWith is newAdoptFixture with the root's allowCrossMounts option.
func newAdoptFixtureWith(t *testing.T, allowCrossMounts bool) *adoptFixture {
	t.Helper()
	testutil.RequireRoot(t)
	base := t.TempDir()
	root, outside := filepath.Join(base, "srv"), filepath.Join(base, "outside")
	for _, d := range []string{filepath.Join(base, "kubelet", "pods"), filepath.Join(root, "data"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e := testengine.Start(t, storage.Config{
		Pools:      []storage.PoolConfig{{Name: "default", Path: filepath.Join(base, "pool"), Kind: storage.KindDir}},
		AdoptRoots: []storage.AdoptRoot{{Path: root, AllowCrossMounts: allowCrossMounts}},
	})
	l := &locks.Set{}
	kubelet := filepath.Join(base, "kubelet")
	srv, err := node.New(node.Config{NodeID: testNode, KubeletDir: kubelet}, e, l)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{srv: srv, engine: e, locks: l, pool: e.DefaultPool(), base: base, kubelet: kubelet}
	return &adoptFixture{fixture: f, root: root, outside: outside}
}

func adoptReq(path, target string, vc *csi.VolumeCapability, readOnly bool) *csi.NodePublishVolumeRequest {
	r := publishReq("adopted-data", target, vc, readOnly)
	r.VolumeContext = map[string]string{node.AttrPath: path}
	return r
}

func TestAdoptedPublishSharesData(t *testing.T) {
	f := newAdoptFixture(t)
	dir := filepath.Join(f.root, "data")
	if err := os.WriteFile(filepath.Join(dir, "kept"), []byte("old data"), 0o644); err != nil {
		t.Fatal(err)
	}
	rwx := mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
	a, b, ro := f.target(t, "pod-a"), f.target(t, "pod-b"), f.target(t, "pod-ro")
	for _, tg := range []string{a, b} {
		_, err := f.srv.NodePublishVolume(context.Background(), adoptReq(dir, tg, rwx, false))
		wantCode(t, err, codes.OK)
	}
	_, err := f.srv.NodePublishVolume(context.Background(), adoptReq(dir, ro, rwx, true))
	wantCode(t, err, codes.OK)
	// Idempotent retry.
	_, err = f.srv.NodePublishVolume(context.Background(), adoptReq(dir, a, rwx, false))
	wantCode(t, err, codes.OK)

	if err := os.WriteFile(filepath.Join(a, "new"), []byte("from a"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(b, "new")); err != nil || string(got) != "from a" {
		t.Fatalf("write through a not visible through b: %q %v", got, err)
	}
	if got, err := os.ReadFile(filepath.Join(ro, "kept")); err != nil || string(got) != "old data" {
		t.Fatalf("read-only target: %q %v", got, err)
	}
	if err := os.WriteFile(filepath.Join(ro, "x"), nil, 0o644); !os.IsPermission(err) && !isErrno(err, unix.EROFS) {
		t.Fatalf("write through read-only target: %v, want EROFS", err)
	}
	for _, opt := range []string{"nosuid", "nodev"} {
		if !contains(mountOptions(t, a), opt) {
			t.Errorf("adopted mount lacks %s: %v", opt, mountOptions(t, a))
		}
	}
	// Stats read the directory's filesystem through the publish path.
	st, err := f.srv.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: "adopted-data", VolumePath: a})
	wantCode(t, err, codes.OK)
	if st.GetUsage()[0].GetTotal() <= 0 {
		t.Errorf("stats total %d", st.GetUsage()[0].GetTotal())
	}

	for _, tg := range []string{a, b, ro} {
		if err := f.unpublish("adopted-data", tg); err != nil {
			t.Fatal(err)
		}
	}
	ctrl := controller.New(f.engine, testNode, f.locks)
	_, err = ctrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: "adopted-data"})
	wantCode(t, err, codes.OK)
	for name, want := range map[string]string{"kept": "old data", "new": "from a"} {
		if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(got) != want {
			t.Fatalf("%s after unpublish and DeleteVolume: %q %v", name, got, err)
		}
	}
}

func TestAdoptedSingleWriter(t *testing.T) {
	f := newAdoptFixture(t)
	dir := filepath.Join(f.root, "data")
	rwop := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)
	_, err := f.srv.NodePublishVolume(context.Background(), adoptReq(dir, f.target(t, "a"), rwop, false))
	wantCode(t, err, codes.OK)
	_, err = f.srv.NodePublishVolume(context.Background(), adoptReq(dir, f.target(t, "b"), rwop, false))
	wantCode(t, err, codes.FailedPrecondition)
}

func TestAdoptedHostilePaths(t *testing.T) {
	f := newAdoptFixture(t)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(f.outside, "secret"), []byte("host"), 0o600))
	must(os.Symlink(f.outside, filepath.Join(f.root, "escape")))
	must(os.MkdirAll(filepath.Join(f.outside, "sub"), 0o755))
	must(os.Symlink(f.outside, filepath.Join(f.root, "linkparent")))
	must(os.WriteFile(filepath.Join(f.root, "file"), []byte("x"), 0o644))
	must(os.Symlink(filepath.Join(f.root, "data"), filepath.Join(f.root, "alias")))

	tests := []struct {
		name     string
		path     string
		wantCode codes.Code
	}{
		{"etc", "/etc", codes.FailedPrecondition},
		{"root", "/", codes.FailedPrecondition},
		{"dotdot", "..", codes.InvalidArgument},
		{"relative", "srv/data", codes.InvalidArgument},
		{"root-relative escape", f.root + "/../outside", codes.InvalidArgument},
		{"the root itself", f.root, codes.FailedPrecondition},
		{"symlink to outside", filepath.Join(f.root, "escape"), codes.FailedPrecondition},
		{"symlinked parent", filepath.Join(f.root, "linkparent", "sub"), codes.FailedPrecondition},
		{"symlink inside the root", filepath.Join(f.root, "alias"), codes.FailedPrecondition},
		{"a file", filepath.Join(f.root, "file"), codes.FailedPrecondition},
		{"missing", filepath.Join(f.root, "nope"), codes.FailedPrecondition},
		{"a pool directory", f.pool.Config().Path, codes.FailedPrecondition},
		{"inside a pool", filepath.Join(f.pool.Config().Path, "volumes"), codes.FailedPrecondition},
		{"empty", "", codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			target := f.target(t, "hostile")
			_, err := f.srv.NodePublishVolume(context.Background(), adoptReq(tc.path, target, rwo, false))
			wantCode(t, err, tc.wantCode)
			if m := mountsUnder(t, f.kubelet); len(m) != 0 {
				t.Fatalf("refused publish left mounts: %v", m)
			}
		})
	}
	t.Run("missing path attribute", func(t *testing.T) {
		r := publishReq("adopted-data", f.target(t, "noattr"), rwo, false)
		_, err := f.srv.NodePublishVolume(context.Background(), r)
		wantCode(t, err, codes.InvalidArgument)
	})
	t.Run("block access", func(t *testing.T) {
		block := &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		}
		_, err := f.srv.NodePublishVolume(context.Background(), adoptReq(filepath.Join(f.root, "data"), f.target(t, "blk"), block, false))
		wantCode(t, err, codes.InvalidArgument)
	})
	if got, err := os.ReadFile(filepath.Join(f.outside, "secret")); err != nil || string(got) != "host" {
		t.Fatalf("outside file touched: %q %v", got, err)
	}
}

// TestAdoptedMountCrossing: a path that reaches, below the adopt root, a mount point
// (here a bind mount of a directory outside the root, as an admin's or a hostile
// mount would be) is refused with FailedPrecondition naming the rule, and nothing is
// mounted; a root with allowCrossMounts publishes it.
func TestAdoptedMountCrossing(t *testing.T) {
	for _, allow := range []bool{false, true} {
		t.Run(fmt.Sprintf("allowCrossMounts=%t", allow), func(t *testing.T) {
			f := newAdoptFixtureWith(t, allow)
			bound := filepath.Join(f.root, "bound")
			for _, d := range []string{bound, filepath.Join(f.outside, "sub")} {
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := unix.Mount(f.outside, bound, "", unix.MS_BIND, ""); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { testutil.UnmountTree(t, bound) })
			for _, path := range []string{bound, filepath.Join(bound, "sub")} {
				target := f.target(t, "x")
				_, err := f.srv.NodePublishVolume(context.Background(), adoptReq(path, target, rwo, false))
				if allow {
					wantCode(t, err, codes.OK)
					if err := f.unpublish("adopted-data", target); err != nil {
						t.Fatal(err)
					}
					continue
				}
				wantCode(t, err, codes.FailedPrecondition)
				if !strings.Contains(status.Convert(err).Message(), "allowCrossMounts") {
					t.Errorf("refusal does not name the rule: %v", err)
				}
				if m := mountsUnder(t, f.kubelet); len(m) != 0 {
					t.Fatalf("refused publish left mounts: %v", m)
				}
			}
		})
	}
}

func TestAdoptedDirectoryRemovedIsAbnormal(t *testing.T) {
	f := newAdoptFixture(t)
	dir := filepath.Join(f.root, "gone")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	target := f.target(t, "a")
	_, err := f.srv.NodePublishVolume(context.Background(), adoptReq(dir, target, rwo, false))
	wantCode(t, err, codes.OK)
	healthOf := func() []*csi.VolumeHealth_VolumeHealthEntry {
		resp, err := f.srv.NodeGetVolumeHealth(context.Background(), &csi.NodeGetVolumeHealthRequest{VolumeId: "adopted-data", VolumePublishPath: target})
		wantCode(t, err, codes.OK)
		return resp.GetVolumeHealth().GetHealthStatuses()
	}
	if h := healthOf(); len(h) != 0 {
		t.Fatalf("healthy adopted volume reports %v", h)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	h := healthOf()
	if len(h) != 1 || h[0].GetReason() != "DirectoryMissing" || h[0].GetStatus() != csi.VolumeHealthErrorType_INACCESSIBLE {
		t.Fatalf("health after removing the directory: %v", h)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func isErrno(err error, errno unix.Errno) bool {
	pe, ok := err.(*os.PathError)
	return ok && pe.Err == errno
}
