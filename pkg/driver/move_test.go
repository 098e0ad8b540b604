package driver_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/locate"
	"github.com/berth-csi/berth/pkg/node"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The two phases of a move through the channel: n2 clones n1's volume while it
// is in use; the source then changes (a file rewritten, one added, one
// removed); NodeStageVolume on n2 with the resync attribute brings the clone up
// to date, taking the unchanged file from the clone itself (the same inode:
// a delta, not a second copy), and is done once.
func TestMoveResyncThroughTheChannel(t *testing.T) {
	where := fixedLocator{}
	n1, n2 := twoPlugins(t, storage.KindDir, where)
	ctx := context.Background()
	srcID, srcHash := sourceOnN1(t, n1, where, nil)
	src := filepath.Join(n1.pool, "volumes", srcHash, "data")
	testutil.WriteRandom(t, filepath.Join(src, "blob"), 3<<20)
	testutil.WriteFile(t, filepath.Join(src, "a"), "a1")
	testutil.WriteFile(t, filepath.Join(src, "gone"), "gone")
	time.Sleep(1200 * time.Millisecond) // older than the delta's ctime margin

	id, hash := cloneOnN2(t, n2, srcID, 8<<20)
	dir := filepath.Join(n2.pool, "volumes", hash)
	blobIno := testutil.Lstat(t, filepath.Join(dir, "data", "blob")).Ino

	testutil.WriteFile(t, filepath.Join(src, "a"), "a2")
	testutil.WriteFile(t, filepath.Join(src, "b"), "new")
	if err := os.Remove(filepath.Join(src, "gone")); err != nil {
		t.Fatal(err)
	}
	stage := func(from string) error {
		_, err := n2.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id,
			StagingTargetPath: filepath.Join(n2.kubelet, "staging-moved"), VolumeCapability: mountRWO[0],
			VolumeContext: map[string]string{node.AttrResyncFrom: from}})
		return err
	}
	if err := stage(storage.VolumeID("local", "other")); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("stage resyncing from another volume: %v, want FailedPrecondition", err)
	}
	var err error
	for deadline := time.Now().Add(testWait); ; time.Sleep(50 * time.Millisecond) {
		err = stage(srcID)
		if status.Code(err) != codes.Aborted || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("stage with resync: %v", err)
	}
	testutil.SameTree(t, "moved volume", testutil.TreeSums(t, filepath.Join(dir, "data")), testutil.TreeSums(t, src))
	if ino := testutil.Lstat(t, filepath.Join(dir, "data", "blob")).Ino; ino != blobIno {
		t.Errorf("the unchanged blob was copied again (inode %d, was %d)", ino, blobIno)
	}
	rec, err := os.ReadFile(filepath.Join(dir, "record.json"))
	if err != nil || !strings.Contains(string(rec), `"resynced"`) {
		t.Errorf("record after the resync (%v): %s", err, rec)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("the volume's directory holds %v, want data and record.json", ents)
	}
	testutil.WriteFile(t, filepath.Join(src, "a"), "a3")
	if err := stage(srcID); err != nil {
		t.Fatalf("stage again: %v", err)
	}
	testutil.AssertContent(t, filepath.Join(dir, "data", "a"), "a2")
}

// The same for an image volume: the clone's image is patched where the
// source's changed, keeps its capacity (larger than the source's) and its
// holes.
func TestMoveResyncOfAnImage(t *testing.T) {
	where := fixedLocator{}
	n1, n2 := twoPlugins(t, storage.KindImage, where)
	ctx := context.Background()
	srcID, srcHash := sourceOnN1(t, n1, where, map[string]string{storage.ParamFSType: "ext4"})
	src := filepath.Join(n1.pool, "volumes", srcHash, storage.ImageFile)
	writeAt := func(p string, off int64, s string) {
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte(s), off); err != nil {
			t.Fatal(err)
		}
	}
	writeAt(src, 1<<20, "before the clone")
	id, hash := cloneOnN2(t, n2, srcID, 16<<20)
	img := filepath.Join(n2.pool, "volumes", hash, storage.ImageFile)
	writeAt(src, 6<<20, "after the clone")

	var err error
	for deadline := time.Now().Add(testWait); ; time.Sleep(50 * time.Millisecond) {
		_, err = n2.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id,
			StagingTargetPath: filepath.Join(n2.kubelet, "staging-moved"), VolumeCapability: mountRWO[0],
			VolumeContext: map[string]string{node.AttrResyncFrom: srcID}})
		if status.Code(err) != codes.Aborted || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("stage with resync: %v", err)
	}
	a, b := testutil.ReadAt(t, src, 0, 8<<20), testutil.ReadAt(t, img, 0, 8<<20)
	if string(a) != string(b) {
		t.Error("the moved image differs from its source")
	}
	if st := testutil.Lstat(t, img); st.Size != 16<<20 || st.Blocks*512 > 4<<20 {
		t.Errorf("moved image: %d bytes, %d allocated; want 16 MiB, sparse", st.Size, st.Blocks*512)
	}
}

// sourceOnN1 creates volume pvc-src of 8 MiB on n1 with params, where says it is
// there; its ID and hash.
func sourceOnN1(t *testing.T, n1 nodePlugin, where fixedLocator, params map[string]string) (id, hash string) {
	t.Helper()
	vol, err := n1.ctrl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "pvc-src", VolumeCapabilities: mountRWO,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20}, AccessibilityRequirements: onNode("n1"), Parameters: params})
	if err != nil {
		t.Fatal(err)
	}
	id = vol.GetVolume().GetVolumeId()
	where[id] = locate.Where{Node: "n1", Address: "127.0.0.1"}
	return id, hashOf(t, id)
}

// cloneOnN2 clones srcID on n2 as pvc-moved of size bytes, through the channel;
// its ID and hash.
func cloneOnN2(t *testing.T, n2 nodePlugin, srcID string, size int64) (id, hash string) {
	t.Helper()
	got, err := createDone(t, n2.ctrl, &csi.CreateVolumeRequest{Name: "pvc-moved", VolumeCapabilities: mountRWO,
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, AccessibilityRequirements: onNode("n2"),
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: srcID}}}})
	if err != nil {
		t.Fatalf("clone on n2: %v", err)
	}
	id = got.GetVolume().GetVolumeId()
	return id, hashOf(t, id)
}

func hashOf(t *testing.T, id string) string {
	t.Helper()
	pid, err := storage.ParseVolumeID(id)
	if err != nil {
		t.Fatal(err)
	}
	return pid.Hash
}
