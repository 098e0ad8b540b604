package controller_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

func TestDeleteVolume(t *testing.T) {
	tests := []struct {
		name string
		// setup prepares the fixture and returns the ID to delete.
		setup    func(t *testing.T, f *fixture) string
		wantCode codes.Code
		// wantExists: the volume setup created must still exist afterwards.
		wantExists bool
	}{
		{"missing id", func(*testing.T, *fixture) string { return "" }, codes.InvalidArgument, false},
		{"dot-dot id", func(*testing.T, *fixture) string { return "../x" }, codes.InvalidArgument, false},
		{"id with slash", func(*testing.T, *fixture) string { return "a/b" }, codes.InvalidArgument, false},
		{"id with NUL", func(*testing.T, *fixture) string { return "b1-default-\x00" }, codes.InvalidArgument, false},
		{"id of 4 KiB", func(*testing.T, *fixture) string { return strings.Repeat("b", 4096) }, codes.InvalidArgument, false},
		{"id not UTF-8", func(*testing.T, *fixture) string { return "b1-\xff" }, codes.InvalidArgument, false},
		{"unknown Berth id", func(*testing.T, *fixture) string { return unknownID }, codes.OK, false},
		// Another driver (the node that holds the pool) may hold this volume.
		{"id of a pool this node lacks", func(*testing.T, *fixture) string {
			return "b1-elsewhere-0123456789abcdef0123456789abcdef"
		}, codes.FailedPrecondition, false},
		{"foreign id", func(*testing.T, *fixture) string { return "pvc-1234" }, codes.OK, false},
		{"existing volume", func(t *testing.T, f *fixture) string {
			return f.mustCreate(t, "pvc-del").GetVolumeId()
		}, codes.OK, false},
		{"deleted twice", func(t *testing.T, f *fixture) string {
			id := f.mustCreate(t, "pvc-del").GetVolumeId()
			_, err := f.srv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id})
			wantCode(t, err, codes.OK)
			return id
		}, codes.OK, false},
		{"data dir already gone", func(t *testing.T, f *fixture) string {
			id := f.mustCreate(t, "pvc-del").GetVolumeId()
			if err := os.RemoveAll(f.dataPath(t, id)); err != nil {
				t.Fatal(err)
			}
			return id
		}, codes.OK, false},
		{"published", func(t *testing.T, f *fixture) string {
			id := f.mustCreate(t, "pvc-del").GetVolumeId()
			f.engine.AddPublication(id, storage.Publication{TargetPath: "/var/lib/kubelet/pods/p/volumes/x/mount"})
			return id
		}, codes.FailedPrecondition, true},
		{"locked", func(t *testing.T, f *fixture) string {
			id := f.mustCreate(t, "pvc-del").GetVolumeId()
			if !f.locks.TryAcquire(id) {
				t.Fatal("lock already held")
			}
			t.Cleanup(func() { f.locks.Release(id) })
			return id
		}, codes.Aborted, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			id := tc.setup(t, f)
			var data string
			if tc.wantExists {
				data = f.dataPath(t, id)
			}
			_, err := f.srv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id})
			wantCode(t, err, tc.wantCode)
			if tc.wantExists {
				if !f.exists(id) {
					t.Fatalf("volume %s is gone", id)
				}
				if _, err := os.Stat(data); err != nil {
					t.Fatalf("data of volume %s: %v", id, err)
				}
				return
			}
			if id != "" && f.exists(id) {
				t.Fatalf("volume %s still exists", id)
			}
		})
	}
}

func TestDeleteVolumeThenCreateAgain(t *testing.T) {
	f := newFixture(t)
	v := f.mustCreate(t, "pvc-again")
	data := f.dataPath(t, v.GetVolumeId())
	if err := os.WriteFile(data+"/old", []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := f.srv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId()})
	wantCode(t, err, codes.OK)
	v2 := f.mustCreate(t, "pvc-again")
	if v2.GetVolumeId() != v.GetVolumeId() {
		t.Fatalf("ID changed: %s, then %s", v.GetVolumeId(), v2.GetVolumeId())
	}
	if _, err := os.Stat(data + "/old"); !os.IsNotExist(err) {
		t.Fatalf("the new volume holds the deleted one's data (stat: %v)", err)
	}
}

// TestVolumeWithUnreadableRecord: a volume directory whose record the driver cannot
// read at start-up is neither deleted (success would let the CO forget data that is
// still there) nor created again over: both are FailedPrecondition.
func TestVolumeWithUnreadableRecord(t *testing.T) {
	base := t.TempDir()
	id := storage.VolumeID("default", "pvc-damaged")
	volDir := filepath.Join(base, "default", "volumes", id[len(id)-32:])
	if err := os.MkdirAll(filepath.Join(volDir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(volDir, "record.json"), []byte(`{"version": 1, "id": "b1-`), 0o600); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, dirPool(base, "default"))

	_, err := f.srv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = f.srv.CreateVolume(context.Background(), createReq("pvc-damaged", 1<<20))
	wantCode(t, err, codes.FailedPrecondition)
	if _, err := os.Stat(filepath.Join(volDir, "data")); err != nil {
		t.Fatalf("data of the damaged volume: %v", err)
	}
}
