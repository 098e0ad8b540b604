package controller_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

// shortCall runs f with the short deadline a provisioner's --timeout gives, and
// fails the test when it does not answer within 10 s.
func shortCall(t *testing.T, f func(ctx context.Context) error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		done <- f(ctx)
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("the call did not answer within 10 s")
		return nil
	}
}

// TestCreateVolumeCopyInBackground: on a pool without reflinks a restore that
// outlives the call answers Aborted, to that call and every retry, until it is done;
// meanwhile another size is AlreadyExists and deleting the snapshot
// FailedPrecondition. DeleteVolume cancels a running copy: Aborted while it rolls
// back, then OK, and the retry after the copy finishes returns the volume.
func TestCreateVolumeCopyInBackground(t *testing.T) {
	pc := loopPool(t, testutil.Ext4Plain, storage.KindDir, "default")
	f := newFixture(t, pc)
	mnt := filepath.Dir(pc.Path)
	src := f.create(t, "src", "default", 1<<20, nil)
	writeRandom(t, filepath.Join(f.dataPath(t, src), "f"), 1<<20)
	snap := f.snapshot(t, "snap", src, false)
	restore := inPool("restored", "default", 1<<20, fromSnapshot(snap.GetSnapshotId()))
	createVolume := func(req *csi.CreateVolumeRequest) error {
		return shortCall(t, func(ctx context.Context) error {
			_, err := f.srv.CreateVolume(ctx, req)
			return err
		})
	}

	thaw := testutil.FreezeFS(t, mnt)
	wantCode(t, createVolume(restore), codes.Aborted)
	wantCode(t, createVolume(restore), codes.Aborted)
	wantCode(t, createVolume(inPool("restored", "default", 2<<20, fromSnapshot(snap.GetSnapshotId()))), codes.AlreadyExists)
	_, err := f.srv.DeleteSnapshot(context.Background(), &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId()})
	wantCode(t, err, codes.FailedPrecondition)

	// The claim is deleted meanwhile: the copy is cancelled.
	id := storage.VolumeID("default", "restored")
	wantCode(t, shortCall(t, func(ctx context.Context) error {
		_, err := f.srv.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
		return err
	}), codes.Aborted)
	thaw()
	_, err = f.srv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id})
	wantCode(t, err, codes.OK)
	if f.exists(id) {
		t.Fatal("the restore whose copy was cancelled exists")
	}

	// Asked again, it is copied again; the retries find it done.
	thaw = testutil.FreezeFS(t, mnt)
	wantCode(t, createVolume(restore), codes.Aborted)
	thaw()
	deadline := time.Now().Add(readyTimeout)
	for {
		err := createVolume(restore)
		if err == nil {
			break
		}
		wantCode(t, err, codes.Aborted)
		if time.Now().After(deadline) {
			t.Fatalf("restore still in progress after %v", readyTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !f.exists(id) {
		t.Fatal("the restore answered OK does not exist")
	}
}
