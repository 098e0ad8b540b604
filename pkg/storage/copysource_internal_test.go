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
)

// TestCopyOfSourceDeletedElsewhere: in a shared pool another host may delete the
// source of a copy (a snapshot's volume, a restore's snapshot, a clone's volume) while
// this one copies it: that host's delete does not see this host's copy. The copy then
// finds its entries vanishing; it must fail, never commit what it copied so far. The
// other host's delete (a rename into the trash, then its purge, files first) is
// played, deterministically, as soon as the copy has copied its first file; the copy
// goes on in the directories it holds open.
func TestCopyOfSourceDeletedElsewhere(t *testing.T) {
	tests := []struct {
		name string
		// copy makes the copy of source (a volume's hash, with snapshot "snap-src" of
		// it), deleted under it by deleteSource; it returns the entry its commit
		// would make and the copy's final error.
		copy func(t *testing.T, p *Pool, source string, deleteSource func(entry string)) (string, error)
	}{
		{"a snapshot of a volume", func(t *testing.T, p *Pool, source string, deleteSource func(string)) (string, error) {
			deleteSource(p.VolumeDir(source))
			id := SnapshotID("default", "snap")
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				s, err := p.CreateSnapshot(context.Background(), "snap", source)
				if err != nil || s.Ready {
					return filepath.Join(p.cfg.Path, snapshotsDir, id[len(id)-hashLen:]), err
				}
				if time.Now().After(deadline) {
					t.Fatal("the snapshot copy did not end")
				}
			}
		}},
		{"a restore of a snapshot", func(t *testing.T, p *Pool, _ string, deleteSource func(string)) (string, error) {
			id := SnapshotID("default", "snap-src")
			deleteSource(filepath.Join(p.cfg.Path, snapshotsDir, id[len(id)-hashLen:]))
			_, err := p.Create(context.Background(), CreateRequest{Name: "pvc-restored", RequiredBytes: 1 << 20,
				AccessType: AccessMount, Source: &Source{Kind: SourceSnapshot, ID: id}})
			return p.VolumeDir(hashOfName("pvc-restored")), err
		}},
		{"a clone of a volume", func(t *testing.T, p *Pool, source string, deleteSource func(string)) (string, error) {
			deleteSource(p.VolumeDir(source))
			_, err := p.Create(context.Background(), CreateRequest{Name: "pvc-clone", RequiredBytes: 1 << 20,
				AccessType: AccessMount, Source: &Source{Kind: SourceVolume, ID: VolumeID("default", "pvc-src")}})
			return p.VolumeDir(hashOfName("pvc-clone")), err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := sharedTmpfsPool(t)
			r, err := p.Create(context.Background(), CreateRequest{Name: "pvc-src", RequiredBytes: 1 << 20, AccessType: AccessMount})
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{"a", "b/c", "b/d", "e/f/g"} {
				writeTestFile(t, filepath.Join(p.DataPath(r.Hash()), f), "pod data "+f)
			}
			waitReady(t, p, "snap-src", r.Hash())

			saved := copyOptions
			t.Cleanup(func() { copyOptions = saved })
			deleteSource := func(entry string) {
				var once sync.Once
				copyOptions.Progress = func(int64) {
					once.Do(func() { deleteElsewhere(t, entry) })
				}
			}
			committed, err := tc.copy(t, p, r.Hash(), deleteSource)
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("copy of a source deleted under it: %v, want ErrNotFound", err)
			}
			if _, err := os.Lstat(committed); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: %v, want nothing committed", committed, err)
			}
		})
	}
}

// sharedTmpfsPool starts an engine on a shared pool "default" on a fresh tmpfs
// (which has no reflinks: snapshots are copied in the background).
func sharedTmpfsPool(t *testing.T) *Pool {
	t.Helper()
	testutil.RequireRoot(t)
	path := filepath.Join(t.TempDir(), "shared")
	testutil.MountTmpfs(t, path, 64<<20)
	e := startOnePool(t, PoolConfig{Name: "default", Path: path, Kind: KindShared})
	if e.DefaultPool().copyIsFast() {
		t.Fatal("tmpfs has no reflinks: copies should run in the background")
	}
	return e.DefaultPool()
}

// waitReady makes snapshot name of the volume with hash source and waits until it
// is ready.
func waitReady(t *testing.T, p *Pool, name, source string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s, err := p.CreateSnapshot(context.Background(), name, source)
		if err != nil {
			t.Fatal(err)
		}
		if s.Ready {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("snapshot %s not ready", name)
		}
	}
}

// deleteElsewhere does what another host's delete does to entry: a rename into the
// trash, then the start of its purge, which removes the files first.
func deleteElsewhere(t *testing.T, entry string) {
	trashed := filepath.Join(filepath.Dir(filepath.Dir(entry)), trashDir, filepath.Base(entry)+".elsewhere")
	if err := os.Rename(entry, trashed); err != nil {
		t.Error(err)
	}
	err := filepath.WalkDir(trashed, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && d.Name() != recordFile {
			err = os.Remove(path)
		}
		return err
	})
	if err != nil {
		t.Error(err)
	}
}

func hashOfName(name string) string {
	id := VolumeID("default", name)
	return id[len(id)-hashLen:]
}
