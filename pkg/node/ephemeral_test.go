package node_test

import (
	"context"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/locks"
	"github.com/berth-csi/berth/pkg/node"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

// kubeletID is a volume_id as kubelet makes them for a CSI ephemeral inline volume.
const kubeletID = "csi-0123abcd0123abcd0123abcd0123abcd0123abcd0123abcd0123abcd0123abcd"

const ctxEphemeral = "csi.storage.k8s.io/ephemeral"

func ephemeralReq(target string, vctx map[string]string) *csi.NodePublishVolumeRequest {
	req := publishReq(kubeletID, target, rwo, false)
	req.VolumeContext = vctx
	return req
}

func TestEphemeralVolumeLifecycle(t *testing.T) {
	testutil.RequireRoot(t)
	f := newFixture(t)
	target := f.target(t, "pod")
	vctx := map[string]string{
		ctxEphemeral: "true", "size": "10Mi",
		"csi.storage.k8s.io/pod.name": "web-0", "csi.storage.k8s.io/pod.namespace": "default",
	}
	_, err := f.srv.NodePublishVolume(context.Background(), ephemeralReq(target, vctx))
	wantCode(t, err, codes.OK)

	p, r, ok := f.engine.Ephemeral(kubeletID)
	if !ok {
		t.Fatal("no ephemeral volume after publish")
	}
	if !r.Ephemeral || r.CapacityBytes != 10<<20 {
		t.Fatalf("record %+v, want ephemeral of 10 MiB", r)
	}
	if err := os.WriteFile(filepath.Join(target, "scratch"), []byte("tmp"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(p.DataPath(r.Hash()), "scratch")); err != nil {
		t.Fatalf("write did not reach the ephemeral volume: %v", err)
	}
	// A retried publish finds the same volume.
	_, err = f.srv.NodePublishVolume(context.Background(), ephemeralReq(target, vctx))
	wantCode(t, err, codes.OK)
	if n := len(f.engine.AllVolumes()); n != 1 {
		t.Fatalf("%d volumes after a retried publish, want 1", n)
	}
	// Stats and health answer for kubelet's ID.
	_, err = f.srv.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: kubeletID, VolumePath: target})
	wantCode(t, err, codes.OK)

	wantCode(t, f.unpublish(kubeletID, target), codes.OK)
	if _, _, ok := f.engine.Ephemeral(kubeletID); ok {
		t.Fatal("ephemeral volume survives its unpublish")
	}
	if n := len(f.engine.AllVolumes()); n != 0 {
		t.Fatalf("%d volumes after unpublish, want 0", n)
	}
	if _, err := os.Stat(p.VolumeDir(r.Hash())); !os.IsNotExist(err) {
		t.Fatalf("volume directory still there (stat: %v)", err)
	}
	wantCode(t, f.unpublish(kubeletID, target), codes.OK)
}

func TestEphemeralVolumeRecovered(t *testing.T) {
	testutil.RequireRoot(t)
	f := newFixture(t)
	target := f.target(t, "pod")
	_, err := f.srv.NodePublishVolume(context.Background(), ephemeralReq(target, map[string]string{ctxEphemeral: "true"}))
	wantCode(t, err, codes.OK)
	g := startFixture(t, f.base, node.Config{NodeID: testNode, KubeletDir: f.kubelet})
	if err := g.srv.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := publications(g.engine, kubeletID); len(got) != 1 || got[target] {
		t.Fatalf("recovered publications %v, want %s read-write under kubelet's ID", got, target)
	}
	wantCode(t, g.unpublish(kubeletID, target), codes.OK)
	if _, _, ok := g.engine.Ephemeral(kubeletID); ok {
		t.Fatal("ephemeral volume survives its unpublish after a restart")
	}
}

func TestEphemeralVolumeAttributes(t *testing.T) {
	tests := []struct {
		name     string
		vctx     map[string]string
		wantCode codes.Code
	}{
		{"unknown attribute", map[string]string{ctxEphemeral: "true", "foo": "bar"}, codes.InvalidArgument},
		{"unknown size unit", map[string]string{ctxEphemeral: "true", "size": "10Zi"}, codes.InvalidArgument},
		{"negative size", map[string]string{ctxEphemeral: "true", "size": "-1Mi"}, codes.InvalidArgument},
		{"fractional size", map[string]string{ctxEphemeral: "true", "size": "1.5Gi"}, codes.InvalidArgument},
		{"unknown pool", map[string]string{ctxEphemeral: "true", "pool": "nope"}, codes.InvalidArgument},
		{"size beyond the filesystem", map[string]string{ctxEphemeral: "true", "size": "1Ei"}, codes.OutOfRange},
		{"not ephemeral: kubelet ID unknown", map[string]string{"size": "10Mi"}, codes.NotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			target := f.target(t, "pod")
			_, err := f.srv.NodePublishVolume(context.Background(), ephemeralReq(target, tc.vctx))
			wantCode(t, err, tc.wantCode)
			if n := len(f.engine.AllVolumes()); n != 0 {
				t.Fatalf("a refused ephemeral publish left %d volumes", n)
			}
			if isMounted(t, target) {
				t.Fatalf("%s mounted", target)
			}
		})
	}
}

func TestParseQuantity(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"0", 0, false},
		{"1", 1, false},
		{"1048576", 1 << 20, false},
		{"1Ki", 1 << 10, false},
		{"10Mi", 10 << 20, false},
		{"2Gi", 2 << 30, false},
		{"3Ti", 3 << 40, false},
		{"1Pi", 1 << 50, false},
		{"7Ei", 7 << 60, false},
		{"1k", 1000, false},
		{"5M", 5_000_000, false},
		{"1G", 1_000_000_000, false},
		{"2T", 2_000_000_000_000, false},
		{"1P", 1_000_000_000_000_000, false},
		{"9E", 9_000_000_000_000_000_000, false},
		{"9223372036854775807", 1<<63 - 1, false},
		{"8Ei", 0, true},
		{"10E", 0, true},
		{"9223372036854775808", 0, true},
		{"", 0, true},
		{"Mi", 0, true},
		{"-1", 0, true},
		{"-1Mi", 0, true},
		{"1.5Gi", 0, true},
		{"10Zi", 0, true},
		{"1K", 0, true},
		{"1m", 0, true},
		{"1mi", 0, true},
		{"1e3", 0, true},
		{" 1Mi", 0, true},
		{"1Mi ", 0, true},
		{"1 Mi", 0, true},
		{"0x10", 0, true},
		{"1MiB", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := storage.ParseQuantity(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("ParseQuantity(%q) = %d, %v; want error %t", tc.in, got, err, tc.wantErr)
			}
			if err == nil && got != tc.want {
				t.Fatalf("ParseQuantity(%q) = %d, want %d", tc.in, got, tc.want)
			}
		})
	}
}

// TestEphemeralVolumeRefusedPublish checks that an ephemeral publish refused after the
// volume was made leaves no volume behind: kubelet never unpublishes a publish that
// failed with a final error, so nothing else would ever delete it.
func TestEphemeralVolumeRefusedPublish(t *testing.T) {
	testutil.RequireRoot(t)
	tests := []struct {
		name     string
		target   func(t *testing.T, f *fixture) string
		vc       *csi.VolumeCapability
		wantCode codes.Code
	}{
		{"parent does not exist", func(t *testing.T, f *fixture) string {
			return filepath.Join(f.kubelet, "pods", "missing", "mount")
		}, rwo, codes.FailedPrecondition},
		{"symlink as target", func(t *testing.T, f *fixture) string {
			target := f.target(t, "pod")
			if err := os.Symlink(f.base, target); err != nil {
				t.Fatal(err)
			}
			return target
		}, rwo, codes.FailedPrecondition},
		{"MULTI_NODE access mode", func(t *testing.T, f *fixture) string {
			return f.target(t, "pod")
		}, mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER), codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			req := ephemeralReq(tc.target(t, f), map[string]string{ctxEphemeral: "true", "size": "10Mi"})
			req.VolumeCapability = tc.vc
			_, err := f.srv.NodePublishVolume(context.Background(), req)
			wantCode(t, err, tc.wantCode)
			if _, _, ok := f.engine.Ephemeral(kubeletID); ok {
				t.Fatal("a refused ephemeral publish left its volume behind")
			}
			if m := mountsUnder(t, f.base); len(m) != 0 {
				t.Fatalf("mounts left: %v", m)
			}
		})
	}
}

// policyFixture is a node service on two dir pools: "first" (not marked for inline
// volumes, and first, so the default for everything else) and "scratch" (marked, up
// to 32 MiB); with marked false, neither is marked.
func policyFixture(t *testing.T, marked bool) *fixture {
	t.Helper()
	base := t.TempDir()
	kubelet := filepath.Join(base, "kubelet")
	if err := os.MkdirAll(filepath.Join(kubelet, "pods"), 0o750); err != nil {
		t.Fatal(err)
	}
	scratch := storage.PoolConfig{Name: "scratch", Path: filepath.Join(base, "scratch"), Kind: storage.KindDir}
	if marked {
		scratch.Ephemeral = storage.EphemeralConfig{Allowed: true, MaxSize: "32Mi"}
	}
	e := testengine.Start(t, storage.Config{Pools: []storage.PoolConfig{
		{Name: "first", Path: filepath.Join(base, "first"), Kind: storage.KindDir}, scratch,
	}})
	l := &locks.Set{}
	srv, err := node.New(node.Config{NodeID: testNode, KubeletDir: kubelet}, e, l)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{srv: srv, engine: e, locks: l, pool: e.DefaultPool(), base: base, kubelet: kubelet}
}

// hostTree lists every path under dir, to show that a refused request changed nothing.
func hostTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		out = append(out, path)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestEphemeralPoolPolicy: a pod's inline volume goes only to a pool the admin marked
// for inline volumes (pools[].ephemeral.allowed), at most of its ephemeral.maxSize;
// a refused request leaves the host as it was.
func TestEphemeralPoolPolicy(t *testing.T) {
	testutil.RequireRoot(t)
	tests := []struct {
		name      string
		marked    bool
		vctx      map[string]string
		wantCode  codes.Code
		wantPool  string
		wantBytes int64
	}{
		{"no pool: the marked pool, not the first", true, map[string]string{"size": "16Mi"}, codes.OK, "scratch", 16 << 20},
		{"no size: the pool's maximum when under 1Gi", true, map[string]string{}, codes.OK, "scratch", 32 << 20},
		{"size zero: as no size", true, map[string]string{"size": "0"}, codes.OK, "scratch", 32 << 20},
		{"the marked pool by name", true, map[string]string{"pool": "scratch", "size": "32Mi"}, codes.OK, "scratch", 32 << 20},
		{"a pool not marked", true, map[string]string{"pool": "first", "size": "16Mi"}, codes.InvalidArgument, "", 0},
		{"a pool not marked, no size", true, map[string]string{"pool": "first"}, codes.InvalidArgument, "", 0},
		{"over the maximum", true, map[string]string{"size": "33Mi"}, codes.OutOfRange, "", 0},
		{"over the maximum by one byte", true, map[string]string{"pool": "scratch", "size": "33554433"}, codes.OutOfRange, "", 0},
		{"the whole filesystem", true, map[string]string{"size": "1Ei"}, codes.OutOfRange, "", 0},
		{"no pool marked", false, map[string]string{"size": "16Mi"}, codes.FailedPrecondition, "", 0},
		{"no pool marked, pool named", false, map[string]string{"pool": "scratch"}, codes.InvalidArgument, "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := policyFixture(t, tc.marked)
			target := f.target(t, "pod")
			vctx := map[string]string{ctxEphemeral: "true"}
			maps.Copy(vctx, tc.vctx)
			before := hostTree(t, f.base)
			_, err := f.srv.NodePublishVolume(context.Background(), ephemeralReq(target, vctx))
			wantCode(t, err, tc.wantCode)
			if tc.wantCode != codes.OK {
				if !strings.Contains(err.Error(), "pools[].ephemeral.") {
					t.Errorf("error %q does not name the rule (pools[].ephemeral.*)", err)
				}
				if after := hostTree(t, f.base); !slices.Equal(after, before) {
					t.Fatalf("a refused publish changed the host:\nbefore %v\nafter  %v", before, after)
				}
				return
			}
			p, r, ok := f.engine.Ephemeral(kubeletID)
			if !ok || p.Name() != tc.wantPool || r.CapacityBytes != tc.wantBytes {
				t.Fatalf("ephemeral volume %+v in pool %v, want %d bytes in %s", r, p, tc.wantBytes, tc.wantPool)
			}
			wantCode(t, f.unpublish(kubeletID, target), codes.OK)
		})
	}
}
