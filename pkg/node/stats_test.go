package node_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/node"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

// usage returns the bytes and inodes entries of NodeGetVolumeStats.
func (f *fixture) usage(t *testing.T, id, path string) (bytes, inodes *csi.VolumeUsage) {
	t.Helper()
	resp, err := f.srv.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: path})
	wantCode(t, err, codes.OK)
	for _, u := range resp.GetUsage() {
		switch u.GetUnit() {
		case csi.VolumeUsage_BYTES:
			bytes = u
		case csi.VolumeUsage_INODES:
			inodes = u
		}
	}
	if bytes == nil || inodes == nil {
		t.Fatalf("usage %v lacks bytes or inodes", resp.GetUsage())
	}
	return bytes, inodes
}

// writeSynced writes n random bytes to path and fsyncs them, so their blocks are
// allocated when the test measures.
func writeSynced(t *testing.T, path string, n int) {
	t.Helper()
	buf := make([]byte, n)
	_, _ = rand.Read(buf)
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.Write(buf); err != nil {
		t.Fatal(err)
	}
	if err := fh.Sync(); err != nil {
		t.Fatal(err)
	}
}

func TestNodeGetVolumeStatsGrows(t *testing.T) {
	testutil.RequireRoot(t)
	f := newFixture(t)
	f.engine.SetUsageTTL(0) // figures of a walk made now, not a recent one
	r := f.createVolume(t, "pvc-stats")
	target := f.target(t, "pod")
	f.publish(t, r.ID, target, rwo, false)

	b0, i0 := f.usage(t, r.ID, target)
	if b0.GetTotal() != r.CapacityBytes {
		t.Fatalf("total bytes %d, want the capacity %d", b0.GetTotal(), r.CapacityBytes)
	}
	writeSynced(t, filepath.Join(target, "blob"), 1<<20)
	b1, i1 := f.usage(t, r.ID, target)
	if grown := b1.GetUsed() - b0.GetUsed(); grown < 1<<20 {
		t.Fatalf("used bytes grew by %d after writing 1 MiB", grown)
	}
	if b1.GetAvailable() > b0.GetAvailable()-1<<20 {
		t.Fatalf("available bytes %d, then %d after writing 1 MiB", b0.GetAvailable(), b1.GetAvailable())
	}
	if i1.GetUsed() != i0.GetUsed()+1 {
		t.Fatalf("inodes used %d, then %d after one file", i0.GetUsed(), i1.GetUsed())
	}
	for i := range 3 {
		if err := os.WriteFile(filepath.Join(target, fmt.Sprint("f", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(target, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, i2 := f.usage(t, r.ID, target); i2.GetUsed() != i1.GetUsed()+4 {
		t.Fatalf("inodes used %d, then %d after three files and a directory", i1.GetUsed(), i2.GetUsed())
	}
}

func TestNodeGetVolumeStatsRequests(t *testing.T) {
	const existing = "<existing>"
	tests := []struct {
		name     string
		id       string
		path     func(f *fixture) string
		wantCode codes.Code
	}{
		{"existing path", existing, func(f *fixture) string { return f.kubelet }, codes.OK},
		{"missing volume id", "", func(f *fixture) string { return f.kubelet }, codes.InvalidArgument},
		{"missing volume path", existing, func(*fixture) string { return "" }, codes.InvalidArgument},
		{"volume path that does not exist", existing, func(f *fixture) string { return filepath.Join(f.kubelet, "pods", "gone") }, codes.NotFound},
		{"unknown volume", unknownID, func(f *fixture) string { return f.kubelet }, codes.NotFound},
		{"foreign volume id", "pvc-1234", func(f *fixture) string { return f.kubelet }, codes.NotFound},
		{"hostile volume id", "../../x", func(f *fixture) string { return f.kubelet }, codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			id := tc.id
			if id == existing {
				id = f.createVolume(t, "pvc-stats").ID
			}
			_, err := f.srv.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: tc.path(f)})
			wantCode(t, err, tc.wantCode)
		})
	}
}

func TestNodeGetVolumeHealth(t *testing.T) {
	testutil.RequireRoot(t)
	tests := []struct {
		name        string
		setup       func(t *testing.T, f *fixture, id, target string)
		publishPath bool
		wantReasons []string
	}{
		{"published and healthy", nil, true, nil},
		{"no publish path", nil, false, nil},
		{"unmounted behind the driver's back", func(t *testing.T, _ *fixture, _, target string) {
			if err := unix.Unmount(target, 0); err != nil {
				t.Fatal(err)
			}
		}, true, []string{"NotMounted"}},
		{"data dir removed", func(t *testing.T, f *fixture, id, target string) {
			if err := unix.Unmount(target, 0); err != nil {
				t.Fatal(err)
			}
			_, r, err := f.engine.Volume(id)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.RemoveAll(f.dataPath(r)); err != nil {
				t.Fatal(err)
			}
		}, false, []string{"DataMissing"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			r := f.createVolume(t, "pvc-health")
			target := f.target(t, "pod")
			f.publish(t, r.ID, target, rwo, false)
			if tc.setup != nil {
				tc.setup(t, f, r.ID, target)
			}
			req := &csi.NodeGetVolumeHealthRequest{VolumeId: r.ID}
			if tc.publishPath {
				req.VolumePublishPath = target
			}
			resp, err := f.srv.NodeGetVolumeHealth(context.Background(), req)
			wantCode(t, err, codes.OK)
			h := resp.GetVolumeHealth()
			if h.GetVolumeId() != r.ID {
				t.Fatalf("volume_id %q, want %q", h.GetVolumeId(), r.ID)
			}
			var reasons []string
			for _, e := range h.GetHealthStatuses() {
				reasons = append(reasons, e.GetReason())
				if e.GetStatus() != csi.VolumeHealthErrorType_INACCESSIBLE {
					t.Errorf("entry %v: status %s, want INACCESSIBLE", e, e.GetStatus())
				}
			}
			if !slices.Equal(reasons, tc.wantReasons) {
				t.Fatalf("reasons %v, want %v", reasons, tc.wantReasons)
			}
		})
	}
}

func TestNodeGetVolumeHealthRequests(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name     string
		id       string
		wantCode codes.Code
	}{
		{"missing volume id", "", codes.InvalidArgument},
		{"unknown volume", unknownID, codes.NotFound},
		{"foreign volume id", "pvc-1234", codes.NotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.srv.NodeGetVolumeHealth(context.Background(), &csi.NodeGetVolumeHealthRequest{VolumeId: tc.id})
			wantCode(t, err, tc.wantCode)
		})
	}
}

func TestNodeGetInfo(t *testing.T) {
	f := newFixture(t)
	g := startFixture(t, f.base, node.Config{NodeID: testNode, KubeletDir: f.kubelet, MaxVolumes: 7})
	for _, tc := range []struct {
		name    string
		f       *fixture
		wantMax int64
	}{
		{"no limit", f, 0},
		{"limit", g, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := tc.f.srv.NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{})
			wantCode(t, err, codes.OK)
			if resp.GetNodeId() != testNode || resp.GetMaxVolumesPerNode() != tc.wantMax {
				t.Fatalf("node %q max %d, want %q max %d", resp.GetNodeId(), resp.GetMaxVolumesPerNode(), testNode, tc.wantMax)
			}
			want := map[string]string{"topology.berth.csi.io/node": testNode}
			if got := resp.GetAccessibleTopology().GetSegments(); !maps.Equal(got, want) {
				t.Fatalf("topology %v, want %v", got, want)
			}
		})
	}
}

func TestNodeGetCapabilities(t *testing.T) {
	f := newFixture(t)
	resp, err := f.srv.NodeGetCapabilities(context.Background(), &csi.NodeGetCapabilitiesRequest{})
	wantCode(t, err, codes.OK)
	var got []csi.NodeServiceCapability_RPC_Type
	for _, c := range resp.GetCapabilities() {
		got = append(got, c.GetRpc().GetType())
	}
	slices.Sort(got)
	want := []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		// The kubelet hands fsGroup to the driver, which skips adopted directories.
		csi.NodeServiceCapability_RPC_VOLUME_MOUNT_GROUP,
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("capabilities %v, want %v", got, want)
	}
	// Advertised, so served: an empty request is refused for its missing fields.
	_, err = f.srv.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{})
	wantCode(t, err, codes.InvalidArgument)
	_, err = f.srv.NodeExpandVolume(context.Background(), &csi.NodeExpandVolumeRequest{})
	wantCode(t, err, codes.InvalidArgument)
}
