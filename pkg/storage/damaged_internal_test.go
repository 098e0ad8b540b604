package storage

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage/quota"
)

// TestDamagedVolumeKeepsItsProject: the quota project a damaged volume's data is
// charged to stays taken after a restart, read from its data directory where the
// record cannot say; the one its record still names too. A data directory whose
// project cannot be read stops every allocation. Plain XFS carries project IDs
// without enforcing quotas, so the pool is not served here: only its start-up
// reconciliation and the engine's allocator are under test.
func TestDamagedVolumeKeepsItsProject(t *testing.T) {
	const (
		onDisk = ProjectIDBase     // what the damaged volume's data/ is charged to
		named  = ProjectIDBase + 1 // what its (future-version) record names
	)
	tests := []struct {
		name string
		// plant lays out the damaged volume directory dir.
		plant     func(t *testing.T, dir string)
		wantTaken []uint32
		wantErr   error // of the next allocation
	}{
		{
			name: "corrupt record",
			plant: func(t *testing.T, dir string) {
				mkdirProject(t, filepath.Join(dir, DataDir), onDisk)
				writeTestFile(t, filepath.Join(dir, recordFile), `{"version": 1, "projectID": `)
			},
			wantTaken: []uint32{onDisk},
		},
		{
			name: "record of a future version naming another project",
			plant: func(t *testing.T, dir string) {
				mkdirProject(t, filepath.Join(dir, DataDir), onDisk)
				writeTestFile(t, filepath.Join(dir, recordFile), `{"version": 2, "projectID": 1048577}`)
			},
			wantTaken: []uint32{onDisk, named},
		},
		{
			name: "no record, no data directory",
			plant: func(t *testing.T, dir string) {
				if err := os.MkdirAll(dir, 0o700); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "a data directory whose project cannot be read",
			plant: func(t *testing.T, dir string) {
				writeTestFile(t, filepath.Join(dir, DataDir), "not a directory")
				writeTestFile(t, filepath.Join(dir, recordFile), "{")
			},
			wantErr: ErrPrecondition,
		},
	}
	mnt := testutil.MountFS(t, testutil.XFSPlain, 512<<20)
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(mnt, "pool"+string(rune('a'+i)))
			tc.plant(t, filepath.Join(path, volumesDir, "0123456789abcdef0123456789abcdef"))
			e := startOnePool(t, PoolConfig{Name: "quota", Path: path, Kind: KindQuota})
			projects := e.DefaultPool().projects
			for _, id := range tc.wantTaken {
				if !projects.used[id] {
					t.Errorf("project %d is free after start-up; want it taken", id)
				}
			}
			id, err := projects.allocate()
			if !errors.Is(err, tc.wantErr) || tc.wantErr != nil && err == nil {
				t.Fatalf("allocate = %d, %v; want error %v", id, err, tc.wantErr)
			}
			for _, taken := range tc.wantTaken {
				if err == nil && id == taken {
					t.Fatalf("allocate handed out %d, the damaged volume's project", id)
				}
			}
		})
	}
}

// mkdirProject makes dir with project ID id.
func mkdirProject(t *testing.T, dir string, id uint32) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := quota.SetProject(dir, id); err != nil {
		t.Fatal(err)
	}
}

func writeTestFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
