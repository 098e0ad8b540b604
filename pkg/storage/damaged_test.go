package storage_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-csi/berth/internal/fakehost"
	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/loop"
)

// damages are the ways a committed entry's record can be unreadable; record writes
// (or removes) the record of the entry in dir, whose ID would be id.
var damages = []struct {
	name   string
	record func(t *testing.T, dir, id, otherID string)
}{
	{"corrupt JSON", func(t *testing.T, dir, _, _ string) {
		writeFile(t, filepath.Join(dir, "record.json"), `{"version": 1, "id": "b1-`)
	}},
	{"a future version", func(t *testing.T, dir, id, _ string) {
		writeFile(t, filepath.Join(dir, "record.json"), `{"version": 2, "id": "`+id+`", "pool": "default"}`)
	}},
	{"another entry ID", func(t *testing.T, dir, _, otherID string) {
		rewriteRecord(t, dir, func(m map[string]any) { m["id"] = otherID })
	}},
	{"no record", func(t *testing.T, dir, _, _ string) {
		if err := os.Remove(filepath.Join(dir, "record.json")); err != nil {
			t.Fatal(err)
		}
	}},
}

// rewriteRecord edits the record.json in dir as JSON.
func rewriteRecord(t *testing.T, dir string, edit func(map[string]any)) {
	t.Helper()
	path := filepath.Join(dir, "record.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	data, err = json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, string(data))
}

// TestDamagedVolumeIsKept: a volume whose record became unreadable while the driver
// was down is left alone at start-up, and stays so: deleting it, or creating its
// name again, is refused (never "already gone"), and its data is untouched.
func TestDamagedVolumeIsKept(t *testing.T) {
	for _, tc := range damages {
		t.Run(tc.name, func(t *testing.T) {
			cfg := dirPool(t.TempDir(), "default")
			prev, stop := startEngineStop(t, cfg)
			r := mustCreate(t, prev.DefaultPool(), "pvc-1", mib)
			dir := prev.DefaultPool().VolumeDir(r.Hash())
			writeFile(t, filepath.Join(dir, "data", "file"), "pod data")
			stop()
			tc.record(t, dir, r.ID, storage.VolumeID("default", "pvc-2"))
			recordBefore, _ := os.ReadFile(filepath.Join(dir, "record.json"))

			e := startEngine(t, cfg)
			checkErr(t, e.DeleteVolume(context.Background(), r.ID), storage.ErrPrecondition)
			checkErr(t, e.DefaultPool().Delete(context.Background(), r.Hash()), storage.ErrPrecondition)
			_, err := e.Provision(context.Background(), e.DefaultPool(), provisionReq("pvc-1"))
			checkErr(t, err, storage.ErrPrecondition)

			assertContent(t, filepath.Join(dir, "data", "file"), "pod data")
			if recordAfter, _ := os.ReadFile(filepath.Join(dir, "record.json")); string(recordAfter) != string(recordBefore) {
				t.Errorf("record.json changed: %q, was %q", recordAfter, recordBefore)
			}
			waitEmpty(t, filepath.Join(cfg.Path, "trash"))
			waitEmpty(t, filepath.Join(cfg.Path, "tmp"))

			// Once an operator has moved the directory away, the name is free again.
			if err := os.Rename(dir, filepath.Join(t.TempDir(), "kept")); err != nil {
				t.Fatal(err)
			}
			checkErr(t, e.DeleteVolume(context.Background(), r.ID), nil)
			if _, err := e.Provision(context.Background(), e.DefaultPool(), provisionReq("pvc-1")); err != nil {
				t.Fatalf("create after the damaged directory was moved away: %v", err)
			}
		})
	}
}

// TestDamagedSnapshotIsKept: DeleteSnapshot and CreateSnapshot of a snapshot whose
// record is unreadable are refused, as for volumes.
func TestDamagedSnapshotIsKept(t *testing.T) {
	for _, tc := range damages {
		t.Run(tc.name, func(t *testing.T) {
			cfg := dirPool(t.TempDir(), "default")
			prev, stop := startEngineStop(t, cfg)
			p := prev.DefaultPool()
			r := mustCreate(t, p, "pvc-1", mib)
			s := snapshotReady(t, p, "snap-1", r.Hash())
			stop()
			dir := filepath.Join(cfg.Path, "snapshots", s.Hash())
			tc.record(t, dir, s.ID, storage.SnapshotID("default", "snap-2"))

			e := startEngine(t, cfg)
			checkErr(t, e.DeleteSnapshot(context.Background(), s.ID), storage.ErrPrecondition)
			_, err := e.DefaultPool().CreateSnapshot(context.Background(), "snap-1", r.Hash())
			checkErr(t, err, storage.ErrPrecondition)
			if _, err := os.Stat(filepath.Join(dir, "data")); err != nil {
				t.Errorf("snapshot data: %v", err)
			}
		})
	}
}

// TestDamagedImageKeepsItsLoopDevice: at start-up an image pool detaches loop devices
// that back no staged volume, but never one whose volume's record is unreadable.
func TestDamagedImageKeepsItsLoopDevice(t *testing.T) {
	base := t.TempDir()
	kubelet := filepath.Join(base, "kubelet")
	if err := os.MkdirAll(kubelet, 0o750); err != nil {
		t.Fatal(err)
	}
	fh := fakehost.New(filepath.Join(base, "dev"))
	cfg := storage.Config{Pools: []storage.PoolConfig{{Name: "default", Path: filepath.Join(base, "pool"), Kind: storage.KindImage}}}
	prev, stop := startEngineStop(t, cfg.Pools[0])
	var damaged, leftover *storage.Record
	for _, name := range []string{"pvc-damaged", "pvc-leftover"} {
		r, err := prev.DefaultPool().Create(context.Background(), storage.CreateRequest{
			Name: name, RequiredBytes: mib, AccessType: storage.AccessBlock,
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fh.Host().Loops.Attach(prev.DefaultPool().ImagePath(r.Hash()), loop.Options{}); err != nil {
			t.Fatal(err)
		}
		if name == "pvc-damaged" {
			damaged = r
		} else {
			leftover = r
		}
	}
	stop()
	writeFile(t, filepath.Join(cfg.Pools[0].Path, "volumes", damaged.Hash(), "record.json"), "{")

	e := testengine.StartWithHost(t, cfg, fh.Host())
	n, err := e.Node(storage.NodeConfig{KubeletDir: kubelet, NodeID: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	p := e.DefaultPool()
	if d, err := fh.Host().Loops.Find(p.ImagePath(damaged.Hash())); err != nil || d == nil {
		t.Errorf("loop device of the damaged volume after start-up: %v, %v; want it still attached", d, err)
	}
	if d, err := fh.Host().Loops.Find(p.ImagePath(leftover.Hash())); err != nil || d != nil {
		t.Errorf("loop device of the unstaged volume after start-up: %v, %v; want it detached", d, err)
	}
}

// TestDamagedVolumeInSharedPool: a shared pool re-reads records, so a record damaged
// on another host while this one runs is found at the next lookup: deleting or
// re-creating the volume is refused there too, and listings leave it out.
func TestDamagedVolumeInSharedPool(t *testing.T) {
	testutil.RequireRoot(t)
	path := filepath.Join(t.TempDir(), "shared")
	testutil.MountTmpfs(t, path, 64*mib)
	e := testengine.Start(t, storage.Config{Pools: []storage.PoolConfig{{Name: "default", Path: path, Kind: storage.KindShared}}})
	p := e.DefaultPool()
	for _, tc := range damages {
		t.Run(tc.name, func(t *testing.T) {
			name := "pvc-" + strings.ReplaceAll(tc.name, " ", "-")
			r := mustCreate(t, p, name, mib)
			tc.record(t, p.VolumeDir(r.Hash()), r.ID, storage.VolumeID("default", "pvc-other"))

			checkErr(t, e.DeleteVolume(context.Background(), r.ID), storage.ErrPrecondition)
			_, err := p.Create(context.Background(), storage.CreateRequest{Name: name, RequiredBytes: mib, AccessType: storage.AccessMount})
			checkErr(t, err, storage.ErrPrecondition)
			for _, listed := range p.Records() {
				if listed.ID == r.ID {
					t.Errorf("listing shows the damaged volume %s", r.ID)
				}
			}
			if _, err := os.Stat(p.DataPath(r.Hash())); err != nil {
				t.Errorf("data of the damaged volume: %v", err)
			}
		})
	}
}
