package driver_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/driver"
	"github.com/berth-csi/berth/pkg/locate"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

var blockRWO = []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}}

// TestSnapshotMetadataForwardedToTheSnapshotsNode: with --snapshot-metadata-address,
// a plugin asked on its socket about a snapshot of another node's image pool (the
// external-snapshot-metadata sidecar may run on any node) relays the answers of that
// node's plugin, reached over mutual TLS with the transfer certificates: the same
// messages the holder gives on its own socket. The holder's errors keep their code
// and name the node; a snapshot no node holds, one the pv-lister places on the
// asking node itself, or not a Berth snapshot at all, stays NotFound. Both plugins
// advertise the service, whatever their own pools can answer.
func TestSnapshotMetadataForwardedToTheSnapshotsNode(t *testing.T) {
	where := fixedLocator{}
	metaPort := strconv.Itoa(testutil.FreePort(t))
	n1, n2 := twoPluginsWith(t, storage.KindImage, where, func(o *driver.Options, ip string) {
		o.SnapshotMetadataAddress = net.JoinHostPort(ip, metaPort)
	})
	ctx := context.Background()
	vol, err := n1.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "vol", VolumeCapabilities: blockRWO,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, AccessibilityRequirements: onNode("n1")})
	if err != nil {
		t.Fatal(err)
	}
	// Data in the image (its first 20 KiB), so that the snapshot has ranges to list.
	volID := vol.GetVolume().GetVolumeId()
	f, err := os.OpenFile(filepath.Join(n1.pool, "volumes", volID[strings.LastIndex(volID, "-")+1:], "image"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte(strings.Repeat("berth", 1<<12)), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	snap, err := n1.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: vol.GetVolume().GetVolumeId()})
	if err != nil {
		t.Fatal(err)
	}
	id := snap.GetSnapshot().GetSnapshotId()
	where[id] = locate.Where{Node: "n1", Address: "127.0.0.1"}

	for _, p := range []nodePlugin{n1, n2} {
		caps, err := p.ident.GetPluginCapabilities(ctx, &csi.GetPluginCapabilitiesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(caps.GetCapabilities(), func(c *csi.PluginCapability) bool {
			return c.GetService().GetType() == csi.PluginCapability_Service_SNAPSHOT_METADATA_SERVICE
		}) {
			t.Errorf("SNAPSHOT_METADATA_SERVICE not advertised: %v", caps)
		}
	}

	// Without reflinks here the snapshot is copied in the background: Aborted until done.
	local, err := allocated(ctx, n1.meta, id)
	for deadline := time.Now().Add(testWait); status.Code(err) == codes.Aborted && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		local, err = allocated(ctx, n1.meta, id)
	}
	if err != nil {
		t.Fatalf("on the snapshot's node: %v", err)
	}
	if len(local) == 0 || len(local[0].GetBlockMetadata()) == 0 {
		t.Fatalf("on the snapshot's node: no allocated range in %v", local)
	}
	relayed, err := allocated(ctx, n2.meta, id)
	if err != nil {
		t.Fatalf("asked on the other node: %v", err)
	}
	if !slices.EqualFunc(local, relayed, func(a, b *csi.GetMetadataAllocatedResponse) bool { return proto.Equal(a, b) }) {
		t.Errorf("relayed answers %v, the holder's %v", relayed, local)
	}

	// The holder's error, relayed: an image pool on this filesystem without reflinks
	// cannot answer a delta, or the delta of a snapshot with itself works where it can.
	_, errLocal := delta(ctx, n1.meta, id, id)
	_, errRelayed := delta(ctx, n2.meta, id, id)
	if status.Code(errLocal) != status.Code(errRelayed) {
		t.Errorf("delta: the holder answers %v, relayed %v", errLocal, errRelayed)
	}
	if errRelayed != nil && !strings.Contains(status.Convert(errRelayed).Message(), "node n1: ") {
		t.Errorf("relayed error %v does not name the node", errRelayed)
	}

	mine := storage.SnapshotID("local", "fedcba9876543210fedcba9876543210")
	where[mine] = locate.Where{Node: "n2", Address: "127.0.0.2"}
	for name, sid := range map[string]string{
		"no node holds it":          storage.SnapshotID("local", "0123456789abcdef0123456789abcdef"),
		"not a Berth snapshot":      "snap-of-another-driver",
		"placed on the asking node": mine,
	} {
		if _, err := allocated(ctx, n2.meta, sid); status.Code(err) != codes.NotFound {
			t.Errorf("%s: %v, want NotFound", name, err)
		}
	}
}

func allocated(ctx context.Context, c csi.SnapshotMetadataClient, id string) ([]*csi.GetMetadataAllocatedResponse, error) {
	s, err := c.GetMetadataAllocated(ctx, &csi.GetMetadataAllocatedRequest{SnapshotId: id, MaxResults: 2})
	if err != nil {
		return nil, err
	}
	return drain(s.Recv)
}

func delta(ctx context.Context, c csi.SnapshotMetadataClient, base, target string) ([]*csi.GetMetadataDeltaResponse, error) {
	s, err := c.GetMetadataDelta(ctx, &csi.GetMetadataDeltaRequest{BaseSnapshotId: base, TargetSnapshotId: target})
	if err != nil {
		return nil, err
	}
	return drain(s.Recv)
}

func drain[T any](recv func() (*T, error)) ([]*T, error) {
	var all []*T
	for {
		m, err := recv()
		if errors.Is(err, io.EOF) {
			return all, nil
		}
		if err != nil {
			return all, err
		}
		all = append(all, m)
	}
}
