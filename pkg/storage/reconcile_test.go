package storage_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
)

// A hash no test volume has: the name of planted directories.
const strayHash = "0123456789abcdef0123456789abcdef"

// TestStartReconciles plants, beside a volume committed by a previous engine, what a
// crash or an operator could leave in the pool, then starts a new engine on it. Every
// case also checks that the committed volume comes back with the same record and that
// capacity accounts for it.
func TestStartReconciles(t *testing.T) {
	tests := []struct {
		name string
		// plant adds entries to the stopped pool at root; outside is host data beside it.
		plant func(t *testing.T, root, outside string)
		check func(t *testing.T, p *storage.Pool, root, outside string)
	}{
		{
			name: "nothing else",
		},
		{
			name: "half-created volume in tmp",
			plant: func(t *testing.T, root, _ string) {
				writeFile(t, filepath.Join(root, "tmp", strayHash+".abc", "data", "file"), "x")
				writeFile(t, filepath.Join(root, "tmp", strayHash+".abc", ".record.json.tmp3"), "{")
				writeFile(t, filepath.Join(root, "tmp", "not-even-a-hash"), "x")
			},
			check: func(t *testing.T, p *storage.Pool, root, _ string) {
				if es, _ := os.ReadDir(filepath.Join(root, "tmp")); len(es) != 0 {
					t.Errorf("tmp/ still holds %d entries", len(es))
				}
				waitEmpty(t, filepath.Join(root, "trash"))
				if _, err := p.Get(strayHash); !errors.Is(err, storage.ErrNotFound) {
					t.Errorf("rolled-back volume: Get = %v, want ErrNotFound", err)
				}
			},
		},
		{
			name: "half-deleted volume in trash with links out of the pool",
			plant: func(t *testing.T, root, outside string) {
				vol := filepath.Join(root, "trash", strayHash+".def")
				writeFile(t, filepath.Join(vol, "record.json"), "{}")
				writeFile(t, filepath.Join(vol, "data", "a", "b", "file"), "x")
				symlink(t, filepath.Join(outside, "secret"), filepath.Join(vol, "data", "to-file"))
				symlink(t, outside, filepath.Join(vol, "data", "to-dir"))
				symlink(t, outside, filepath.Join(vol, "data", "a", "to-dir"))
				writeFile(t, filepath.Join(root, "trash", "stray-file"), "x")
			},
			check: func(t *testing.T, _ *storage.Pool, root, outside string) {
				waitEmpty(t, filepath.Join(root, "trash"))
			},
		},
		{
			name: "foreign entry in volumes",
			plant: func(t *testing.T, root, _ string) {
				writeFile(t, filepath.Join(root, "volumes", "lost+found", "#1234"), "fsck found this")
				writeFile(t, filepath.Join(root, "volumes", "lost+found", ".record.json.tmp1"), "not ours")
			},
			check: func(t *testing.T, p *storage.Pool, root, _ string) {
				assertContent(t, filepath.Join(root, "volumes", "lost+found", "#1234"), "fsck found this")
				assertContent(t, filepath.Join(root, "volumes", "lost+found", ".record.json.tmp1"), "not ours")
			},
		},
		{
			name: "volume with a corrupt record",
			plant: func(t *testing.T, root, _ string) {
				writeFile(t, filepath.Join(root, "volumes", strayHash, "record.json"), `{"version": 1, "id": "b1-`)
				writeFile(t, filepath.Join(root, "volumes", strayHash, "data", "file"), "pod data")
			},
			check: func(t *testing.T, p *storage.Pool, root, _ string) {
				assertContent(t, filepath.Join(root, "volumes", strayHash, "record.json"), `{"version": 1, "id": "b1-`)
				assertContent(t, filepath.Join(root, "volumes", strayHash, "data", "file"), "pod data")
				if _, err := p.Get(strayHash); !errors.Is(err, storage.ErrNotFound) {
					t.Errorf("Get = %v, want ErrNotFound", err)
				}
			},
		},
		{
			name: "volume without a record",
			plant: func(t *testing.T, root, _ string) {
				writeFile(t, filepath.Join(root, "volumes", strayHash, "data", "file"), "pod data")
			},
			check: func(t *testing.T, p *storage.Pool, root, _ string) {
				assertContent(t, filepath.Join(root, "volumes", strayHash, "data", "file"), "pod data")
			},
		},
		{
			name: "record of another pool",
			plant: func(t *testing.T, root, _ string) {
				id := storage.VolumeID("other", "pvc-x")
				writeFile(t, filepath.Join(root, "volumes", id[len(id)-32:], "record.json"),
					`{"version": 1, "id": "`+id+`", "name": "pvc-x", "pool": "other", "capacityBytes": 1048576}`)
			},
			check: func(t *testing.T, p *storage.Pool, root, _ string) {
				id := storage.VolumeID("other", "pvc-x")
				if _, err := os.Stat(filepath.Join(root, "volumes", id[len(id)-32:], "record.json")); err != nil {
					t.Errorf("mismatched volume was touched: %v", err)
				}
			},
		},
		{
			name: "record of a future version",
			plant: func(t *testing.T, root, _ string) {
				writeFile(t, filepath.Join(root, "volumes", strayHash, "record.json"), `{"version": 2}`)
			},
			check: func(t *testing.T, p *storage.Pool, root, _ string) {
				assertContent(t, filepath.Join(root, "volumes", strayHash, "record.json"), `{"version": 2}`)
			},
		},
		{
			name: "stale record temp files",
			plant: func(t *testing.T, root, _ string) {
				vol := filepath.Join(root, "volumes", hashOf("default", "pvc-1"))
				writeFile(t, filepath.Join(vol, ".record.json.tmp1"), "{")
				writeFile(t, filepath.Join(vol, ".record.json.tmp42"), "")
				writeFile(t, filepath.Join(vol, "data", ".record.json.tmp7"), "pod data")
			},
			check: func(t *testing.T, _ *storage.Pool, root, _ string) {
				vol := filepath.Join(root, "volumes", hashOf("default", "pvc-1"))
				assertMissing(t, filepath.Join(vol, ".record.json.tmp1"))
				assertMissing(t, filepath.Join(vol, ".record.json.tmp42"))
				// A pod's file of the same name in data/ is the pod's business.
				assertContent(t, filepath.Join(vol, "data", ".record.json.tmp7"), "pod data")
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			const slack = 64 * mib
			cfg := dirPool(t.TempDir(), "default")
			outside := t.TempDir()
			writeFile(t, filepath.Join(outside, "secret"), "host data")

			// The previous engine: a filled pool and one volume holding data.
			prev, stop := startEngineStop(t, cfg)
			fillPool(t, prev.DefaultPool(), slack)
			vol := mustCreate(t, prev.DefaultPool(), "pvc-1", 5*mib)
			writeFile(t, filepath.Join(prev.DefaultPool().DataPath(vol.Hash()), "file"), "pod data")
			records := prev.AllVolumes()
			stop()

			if tc.plant != nil {
				tc.plant(t, cfg.Path, outside)
			}
			e := startEngine(t, cfg)
			p := e.DefaultPool()

			got, err := p.Get(vol.Hash())
			if err != nil || !reflect.DeepEqual(got, vol) {
				t.Fatalf("committed volume after restart: %+v, %v; want %+v", got, err, vol)
			}
			assertContent(t, filepath.Join(p.DataPath(vol.Hash()), "file"), "pod data")
			if all := e.AllVolumes(); !reflect.DeepEqual(all, records) {
				t.Errorf("volumes after restart: %d records, want the %d from before", len(all), len(records))
			}
			if a := available(t, p); a != slack-5*mib {
				t.Errorf("available after restart = %d, want %d", a, slack-5*mib)
			}
			if tc.check != nil {
				tc.check(t, p, cfg.Path, outside)
			}
			assertContent(t, filepath.Join(outside, "secret"), "host data")
			for _, d := range []string{"", "volumes", "tmp", "trash"} {
				if fi, err := os.Stat(filepath.Join(cfg.Path, d)); err != nil || !fi.IsDir() {
					t.Errorf("%s/: %v", d, err)
				}
			}
		})
	}
}

// TestStartCreatesMissingDirectories: a pool whose tmp/ and trash/ were removed still
// starts, and an empty path is laid out from nothing.
func TestStartCreatesMissingDirectories(t *testing.T) {
	cfg := dirPool(t.TempDir(), "default")
	writeFile(t, filepath.Join(cfg.Path, "volumes", "lost+found", "x"), "x")
	p := startEngine(t, cfg).DefaultPool()
	for _, d := range []string{"tmp", "trash"} {
		if fi, err := os.Stat(filepath.Join(cfg.Path, d)); err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("%s/: %v", d, err)
		}
	}
	mustCreate(t, p, "pvc-1", mib)
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}
