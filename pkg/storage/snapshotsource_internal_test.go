package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

// TestSnapshotOfSourceDeletedElsewhere: in a shared pool another host may delete the
// source volume while this one copies it for a snapshot (its delete does not see this
// host's copy). The copy then finds its entries vanishing; it must abort, never
// commit what it copied so far as a ready snapshot. The other host's delete is
// played, deterministically, as soon as the copy has copied its first file.
func TestSnapshotOfSourceDeletedElsewhere(t *testing.T) {
	testutil.RequireRoot(t)
	path := filepath.Join(t.TempDir(), "shared")
	testutil.MountTmpfs(t, path, 64<<20)
	e, err := New(Config{Pools: []PoolConfig{{Name: "default", Path: path, Kind: KindShared}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logr.Discard()))
	t.Cleanup(func() { cancel(); e.Wait() })
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	p := e.DefaultPool()
	if p.copyIsFast() {
		t.Fatal("tmpfs has no reflinks: the copy should run in the background")
	}
	r, err := p.Create(ctx, CreateRequest{Name: "pvc-src", RequiredBytes: 1 << 20, AccessType: AccessMount})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"a", "b/c", "b/d", "e/f/g"} {
		writeTestFile(t, filepath.Join(p.DataPath(r.Hash()), f), "pod data "+f)
	}

	// Another host deletes the source: a rename into the trash, then its purge, which
	// removes the files first; the copy goes on in the directories it holds open.
	var once sync.Once
	saved := copyOptions
	t.Cleanup(func() { copyOptions = saved })
	copyOptions.Progress = func(int64) {
		once.Do(func() {
			trashed := filepath.Join(path, trashDir, r.Hash()+".elsewhere")
			if err := os.Rename(p.VolumeDir(r.Hash()), trashed); err != nil {
				t.Error(err)
			}
			err := filepath.WalkDir(trashed, func(path string, d os.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					err = os.Remove(path)
				}
				return err
			})
			if err != nil {
				t.Error(err)
			}
		})
	}

	var last error
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s, err := p.CreateSnapshot(ctx, "snap", r.Hash())
		if err != nil {
			last = err
			break
		}
		if s.Ready {
			t.Fatalf("snapshot %s of a source deleted during its copy committed as ready", s.ID)
		}
		if time.Now().After(deadline) {
			t.Fatal("the snapshot copy did not end")
		}
	}
	if !errors.Is(last, ErrNotFound) {
		t.Errorf("CreateSnapshot after the source vanished: %v, want ErrNotFound", last)
	}
	id := SnapshotID("default", "snap")
	if _, err := os.Lstat(filepath.Join(path, snapshotsDir, id[len(id)-hashLen:])); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("snapshot directory: %v, want none", err)
	}
}
