package storage_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// The tests of copies in the background hold a copy "in progress" for as long as
// they need by freezing the pool's filesystem (FIFREEZE): the background build
// blocks at its first write until the thaw. No hook in the engine.

// answer is one CreateVolume call with a short deadline, as the provisioner makes
// with its --timeout; it must answer within 10 s (it never waits for a copy).
func answer(t *testing.T, p *storage.Pool, req storage.CreateRequest) (*storage.Record, error) {
	t.Helper()
	var r *storage.Record
	err := within(t, 10*time.Second, "create "+req.Name, func() (err error) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		r, err = p.Create(ctx, req)
		return err
	})
	return r, err
}

// untilCreated repeats req, as the provisioner does, until the volume is returned;
// every answer before must be ErrInProgress.
func untilCreated(t *testing.T, p *storage.Pool, req storage.CreateRequest) *storage.Record {
	t.Helper()
	deadline := time.Now().Add(snapTimeout)
	for {
		r, err := answer(t, p, req)
		if err == nil {
			return r
		}
		if !errors.Is(err, storage.ErrInProgress) {
			t.Fatalf("create %s: %v, want success or ErrInProgress", req.Name, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("create %s still in progress after %v", req.Name, snapTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Fatalf("%s holds %v (err %v), want nothing", dir, entries, err)
	}
}

// restoreReq is a request for volume name of size bytes copied from the source.
func restoreReq(name, kind, id string, size int64) storage.CreateRequest {
	return storage.CreateRequest{Name: name, RequiredBytes: size, AccessType: storage.AccessMount,
		Parameters: map[string]string{storage.ParamPool: "default"}, Source: &storage.Source{Kind: kind, ID: id}}
}

// TestRestoreCopiesInBackground: a restore on a pool without reflinks outlives the
// call that started it. Every retry while it runs answers ErrInProgress (one with
// other parameters ErrExists), the snapshot may not be deleted meanwhile, the
// reservation is held, and the retry after it ends gets the volume.
func TestRestoreCopiesInBackground(t *testing.T) {
	pc := loopPool(t, testutil.Ext4Plain, storage.KindDir)
	p := startEngine(t, pc).DefaultPool()
	// 1 GiB volumes in the 4 GiB filesystem: the accounting, not the free space,
	// bounds what is available, before and after the restore's reservation.
	src := mustCreate(t, p, "src", 1024*mib)
	writeFile(t, filepath.Join(p.DataPath(src.Hash()), "a"), "restored")
	s := snapshotReady(t, p, "snap", src.Hash())
	before := available(t, p)
	req := restoreReq("restored", storage.SourceSnapshot, s.ID, 1024*mib)
	hash := hashOf("default", "restored")

	thaw := testutil.FreezeFS(t, filepath.Dir(pc.Path))
	for i := range 2 {
		if _, err := answer(t, p, req); !errors.Is(err, storage.ErrInProgress) {
			t.Fatalf("create %d while the copy runs: %v, want ErrInProgress", i, err)
		}
	}
	other := req
	other.RequiredBytes = 1280 * mib
	if _, err := answer(t, p, other); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("create with another size while the copy runs: %v, want ErrExists", err)
	}
	if err := p.DeleteSnapshot(context.Background(), s.Hash()); !errors.Is(err, storage.ErrInUse) {
		t.Fatalf("DeleteSnapshot of the source while restoring: %v, want ErrInUse", err)
	}
	if _, err := p.Get(hash); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get while copying: %v, want ErrNotFound", err)
	}
	if got := available(t, p); got != before-1024*mib {
		t.Fatalf("available %d while copying, want %d: the reservation is held", got, before-1024*mib)
	}
	thaw()

	r := untilCreated(t, p, req)
	assertContent(t, filepath.Join(p.DataPath(r.Hash()), "a"), "restored")
	if again, err := answer(t, p, req); err != nil || again.ID != r.ID {
		t.Fatalf("create after commit: %v, %v; want the volume %s", again, err, r.ID)
	}
	assertEmpty(t, filepath.Join(pc.Path, "tmp"))
	if got := available(t, p); got != before-1024*mib {
		t.Fatalf("available %d after the restore, want %d", got, before-1024*mib)
	}
}

// TestDeleteVolumeWhileCloning: DeleteVolume of a clone whose copy runs cancels it
// and, once it is rolled back, succeeds with nothing left and the reservation
// released; the source volume may not be deleted while the copy runs.
func TestDeleteVolumeWhileCloning(t *testing.T) {
	pc := loopPool(t, testutil.Ext4Plain, storage.KindDir)
	p := startEngine(t, pc).DefaultPool()
	src := mustCreate(t, p, "src", 1024*mib)
	writeFile(t, filepath.Join(p.DataPath(src.Hash()), "a"), "cloned")
	before := available(t, p)
	req := restoreReq("clone", storage.SourceVolume, src.ID, 1024*mib)
	hash := hashOf("default", "clone")

	thaw := testutil.FreezeFS(t, filepath.Dir(pc.Path))
	if _, err := answer(t, p, req); !errors.Is(err, storage.ErrInProgress) {
		t.Fatalf("create while the copy runs: %v, want ErrInProgress", err)
	}
	if err := p.Delete(context.Background(), src.Hash()); !errors.Is(err, storage.ErrInUse) {
		t.Fatalf("Delete of the source while cloning: %v, want ErrInUse", err)
	}
	// The rollback cannot write while frozen: the delete answers, and is retried.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := p.Delete(ctx, hash); !errors.Is(err, storage.ErrInProgress) {
		t.Fatalf("Delete while the cancelled copy cannot roll back: %v, want ErrInProgress", err)
	}
	thaw()
	if err := within(t, snapTimeout, "Delete", func() error { return p.Delete(context.Background(), hash) }); err != nil {
		t.Fatalf("Delete after the thaw: %v", err)
	}
	if _, err := p.Get(hash); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get after Delete: %v, want ErrNotFound", err)
	}
	assertEmpty(t, filepath.Join(pc.Path, "tmp"))
	assertMissing(t, p.VolumeDir(hash))
	waitEmpty(t, filepath.Join(pc.Path, "trash"))
	if got := available(t, p); got != before {
		t.Fatalf("available %d after Delete, want %d: the reservation is released", got, before)
	}
	mustDelete(t, p, src.Hash())
}

// TestRestoreFailureReportedOnce: a background copy that fails (the filesystem
// fills up) releases its reservation, reports its error to the next retry only, and
// the retry after that starts the copy again.
func TestRestoreFailureReportedOnce(t *testing.T) {
	mnt := testutil.MountFS(t, testutil.Ext4Plain, 256*mib)
	pc := storage.PoolConfig{Name: "default", Path: filepath.Join(mnt, "pool"), Kind: storage.KindDir, Overcommit: true}
	p := startEngine(t, pc).DefaultPool()
	src := mustCreate(t, p, "src", 16*mib)
	// A dir pool does not enforce sizes: 96 MiB in a 16 MiB volume, twice in the
	// snapshot, leaves no room for a third copy.
	writeRandomFile(t, filepath.Join(p.DataPath(src.Hash()), "blob"), 96*mib)
	s := snapshotReady(t, p, "snap", src.Hash())
	req := restoreReq("restored", storage.SourceSnapshot, s.ID, 16*mib)

	failed := func() error {
		t.Helper()
		deadline := time.Now().Add(snapTimeout)
		for {
			_, err := answer(t, p, req)
			switch {
			case err == nil:
				t.Fatal("a restore larger than the free space succeeded")
			case !errors.Is(err, storage.ErrInProgress):
				return err
			case time.Now().After(deadline):
				t.Fatalf("restore still in progress after %v", snapTimeout)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := failed(); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("restore: %v, want ENOSPC", err)
	}
	assertEmpty(t, filepath.Join(pc.Path, "tmp"))
	// Reported once: the next retry starts over (held in progress by the freeze).
	thaw := testutil.FreezeFS(t, mnt)
	if _, err := answer(t, p, req); !errors.Is(err, storage.ErrInProgress) {
		t.Fatalf("retry after the reported failure: %v, want ErrInProgress (a new copy)", err)
	}
	thaw()
	if err := failed(); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("second restore: %v, want ENOSPC", err)
	}
	if got := p.Records(); len(got) != 1 {
		t.Fatalf("%d volumes after failed restores, want only the source", len(got))
	}
	assertEmpty(t, filepath.Join(pc.Path, "tmp"))
}

// TestRestoreRestartMidCopy stops the engine while a restore copies (its copy is
// cancelled and rolled back) and leaves in tmp/ what a killed driver's copy leaves;
// the next engine has no such volume, nothing in tmp/, its capacity back, and the
// provisioner's next retry starts the copy again and completes.
func TestRestoreRestartMidCopy(t *testing.T) {
	pc := loopPool(t, testutil.Ext4Plain, storage.KindDir)
	e, err := storage.New(storage.Config{Pools: []storage.PoolConfig{pc}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(klog.NewContext(context.Background(), logr.Discard()))
	defer stop()
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	p := e.DefaultPool()
	src := mustCreate(t, p, "src", 1024*mib)
	writeFile(t, filepath.Join(p.DataPath(src.Hash()), "a"), "complete")
	writeFile(t, filepath.Join(p.DataPath(src.Hash()), "b"), "also complete")
	s := snapshotReady(t, p, "snap", src.Hash())
	before := available(t, p)
	req := restoreReq("restored", storage.SourceSnapshot, s.ID, 1024*mib)
	hash := hashOf("default", "restored")

	thaw := testutil.FreezeFS(t, filepath.Dir(pc.Path))
	if _, err := answer(t, p, req); !errors.Is(err, storage.ErrInProgress) {
		t.Fatalf("create while the copy runs: %v, want ErrInProgress", err)
	}
	// The engine stops (its context ends) before the copy can write anything.
	stop()
	thaw()
	e.Wait()
	half := filepath.Join(pc.Path, "tmp", hash+".0123456789abcdef")
	writeFile(t, filepath.Join(half, "data", "a"), "complete")
	writeFile(t, filepath.Join(half, "record.json"),
		`{"version":1,"id":"`+storage.VolumeID("default", "restored")+`","name":"restored","pool":"default","capacityBytes":1073741824,"accessType":"mount","createdAt":"2026-01-01T00:00:00Z"}`)

	p = startEngine(t, pc).DefaultPool()
	assertEmpty(t, filepath.Join(pc.Path, "tmp"))
	assertMissing(t, p.VolumeDir(hash))
	if _, err := p.Get(hash); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get after restart: %v, want ErrNotFound", err)
	}
	if got := available(t, p); got != before {
		t.Fatalf("available %d after restart, want %d", got, before)
	}
	thaw = testutil.FreezeFS(t, filepath.Dir(pc.Path))
	if _, err := answer(t, p, req); !errors.Is(err, storage.ErrInProgress) {
		t.Fatalf("retry after restart: %v, want ErrInProgress (the copy starts again)", err)
	}
	thaw()
	r := untilCreated(t, p, req)
	assertContent(t, filepath.Join(p.DataPath(r.Hash()), "b"), "also complete")
	assertEmpty(t, filepath.Join(pc.Path, "tmp"))
}
