package controller_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/controller"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// backupPool makes CreateSnapshot keep the snapshot in a shared pool: its ID names
// that pool, it is ready once copied there, and a restore from it lands in the
// node-local pool with the data. Unknown parameters, unknown pools and pools that
// are not shared are InvalidArgument, naming them.
func TestCreateSnapshotWithBackupPool(t *testing.T) {
	_, sh := testutil.SharedDir(t)
	f := newFixture(t, dirPool(t.TempDir(), "default"), dirPool(t.TempDir(), "other"),
		storage.PoolConfig{Name: "sh", Path: sh, Kind: storage.KindShared})
	vol := f.mustCreate(t, "pvc-src")
	if err := os.WriteFile(filepath.Join(f.dataPath(t, vol.GetVolumeId()), "f"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	req := func(params map[string]string) *csi.CreateSnapshotRequest {
		r := snapReq("snap-b", vol.GetVolumeId())
		r.Parameters = params
		return r
	}
	for params, msg := range map[string]string{"nope": `pool "nope" is not configured`, "other": "backups go to a shared pool"} {
		_, err := f.srv.CreateSnapshot(context.Background(), req(map[string]string{controller.ParamBackupPool: params}))
		wantCode(t, err, codes.InvalidArgument)
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("backupPool %s: %v, want it to say %q", params, err, msg)
		}
	}
	_, err := f.srv.CreateSnapshot(context.Background(), req(map[string]string{"backupPol": "sh"}))
	wantCode(t, err, codes.InvalidArgument)

	var snap *csi.Snapshot
	deadline := time.Now().Add(readyTimeout)
	for snap == nil || !snap.GetReadyToUse() {
		if time.Now().After(deadline) {
			t.Fatal("backup not ready in time")
		}
		resp, err := f.srv.CreateSnapshot(context.Background(), req(map[string]string{controller.ParamBackupPool: "sh"}))
		wantCode(t, err, codes.OK)
		snap = resp.GetSnapshot()
	}
	if want := storage.SnapshotID("sh", "snap-b"); snap.GetSnapshotId() != want || snap.GetSourceVolumeId() != vol.GetVolumeId() {
		t.Errorf("backup answered %s of %s, want %s of %s", snap.GetSnapshotId(), snap.GetSourceVolumeId(), want, vol.GetVolumeId())
	}
	r := createReq("pvc-restored", 1<<20)
	r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshotId()}}}
	var restored *csi.Volume
	for restored == nil {
		resp, err := f.srv.CreateVolume(context.Background(), r)
		if status.Code(err) == codes.Aborted && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		wantCode(t, err, codes.OK)
		restored = resp.GetVolume()
	}
	if b, err := os.ReadFile(filepath.Join(f.dataPath(t, restored.GetVolumeId()), "f")); err != nil || string(b) != "kept" {
		t.Errorf("restored volume holds %q, %v", b, err)
	}
	if !strings.HasPrefix(restored.GetVolumeId(), "b1-default-") {
		t.Errorf("restored into %s, want the default pool", restored.GetVolumeId())
	}
	if _, err := f.srv.DeleteSnapshot(context.Background(), &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId()}); err != nil {
		t.Errorf("DeleteSnapshot of the backup: %v", err)
	}
}
