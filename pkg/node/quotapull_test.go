package node_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/quota"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A quota volume restored from a snapshot another node holds: the pulled tree is
// charged to the volume's project as it is written (every entry carries the
// project, the usage counts it) and the volume's limit holds after the pull.
func TestQuotaPulledFromAnotherNode(t *testing.T) {
	forEachQuotaFS(t, func(t *testing.T, f *kindFixture) {
		src := t.TempDir()
		testutil.MkdirAll(t, filepath.Join(src, "d", "e"))
		testutil.WriteFile(t, filepath.Join(src, "d", "e", "f"), "nested")
		testutil.WriteRandom(t, filepath.Join(src, "blob"), 4<<20)
		snap := storage.SnapshotID(f.cfg.Name, "on-node-b")
		r := testengine.NewDirRemote(4 << 20)
		r.Add(snap, src)
		f.engine.SetRemote(r)

		seg := []*csi.Topology{{Segments: map[string]string{storage.TopologyKey: testNode}}}
		req := &csi.CreateVolumeRequest{Name: "pvc-pulled", CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20},
			VolumeCapabilities: []*csi.VolumeCapability{rwo}, AccessibilityRequirements: &csi.TopologyRequirement{Requisite: seg},
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
				Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap}}}}
		var resp *csi.CreateVolumeResponse
		var err error
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
			resp, err = f.ctrl.CreateVolume(context.Background(), req)
			if status.Code(err) != codes.Aborted || time.Now().After(deadline) {
				break
			}
		}
		wantCode(t, err, codes.OK)
		_, rec, err := f.engine.Volume(resp.GetVolume().GetVolumeId())
		if err != nil {
			t.Fatal(err)
		}
		data := f.pool.DataPath(rec.Hash())
		// quota.Project reads directories; the files' charge shows in the usage below.
		for _, p := range []string{".", "d", "d/e"} {
			if id, err := quota.Project(filepath.Join(data, p)); err != nil || id != rec.ProjectID {
				t.Errorf("%s: project %d (%v), want the volume's %d", p, id, err, rec.ProjectID)
			}
		}
		if _, err := os.Stat(filepath.Join(f.pool.VolumeDir(rec.Hash()), ".pull")); !os.IsNotExist(err) {
			t.Errorf("the pull's holder directory is left: %v", err)
		}
		testutil.AssertContent(t, filepath.Join(data, "d", "e", "f"), "nested")
		target := f.publishQuota(t, rec, "pod")
		b, _ := f.usage(t, rec.ID, target)
		if b.GetUsed() < 4<<20 {
			t.Errorf("usage %d bytes after pulling 4 MiB: the pulled tree is not charged to the volume", b.GetUsed())
		}
		n, err := fillUnprivileged(t, createFile(t, filepath.Join(target, "more")), rec.CapacityBytes)
		if !overQuota(err) || n+4<<20 > rec.CapacityBytes {
			t.Errorf("wrote %d more bytes into a %d-byte volume holding 4 MiB (%v): want the limit to stop it", n, rec.CapacityBytes, err)
		}
	})
}
