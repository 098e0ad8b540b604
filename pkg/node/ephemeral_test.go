package node_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
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
