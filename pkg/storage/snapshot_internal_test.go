package storage

import (
	"encoding/json"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// FuzzReadSnapshot: a snapshot the pool loads from snapshots/<hash>/record.json is
// one Berth can serve: its ID names this pool and this directory (so DeleteSnapshot
// and ListSnapshots's snapshot_id find it by that ID) and its source is a volume ID
// (CreateSnapshot takes the source's hash from it). Re-encoded as buildSnapshot
// writes it and loaded again, it is the same snapshot.
func FuzzReadSnapshot(f *testing.F) {
	valid := &Snapshot{Version: recordVersion, ID: "s1-default-" + testHash, Name: "snap-1", Pool: "default",
		SourceVolumeID: VolumeID("default", "pvc-1"), SizeBytes: 1 << 20, AccessType: AccessMount,
		CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)}
	data, err := json.MarshalIndent(valid, "", "  ")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add([]byte(`{"version":2,"id":"s1-default-` + testHash + `"}`))
	f.Add([]byte(`null`))
	p := fuzzPool(f)
	path := filepath.Join(p.cfg.Path, snapshotsDir, testHash, recordFile)
	load := func(t *testing.T, data []byte) *Snapshot {
		t.Helper()
		writeFile(t, path, data)
		snaps, _, err := p.scanSnapshots(quietCtx)
		if err != nil {
			t.Fatal(err)
		}
		return snaps[testHash]
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := load(t, data)
		if s == nil {
			return
		}
		id, err := ParseSnapshotID(s.ID)
		if err != nil || id.Pool != "default" || id.Hash != testHash || s.Pool != "default" {
			t.Fatalf("pool default loaded from snapshots/%s a snapshot that is not its own: %+v (ID: %+v, %v)", testHash, s, id, err)
		}
		if _, err := ParseVolumeID(s.SourceVolumeID); err != nil {
			t.Fatalf("loaded snapshot %+v has no source volume ID: %v", s, err)
		}
		enc, err := json.MarshalIndent(s, "", "  ")
		if err != nil {
			t.Fatalf("loaded snapshot %+v does not encode: %v", s, err)
		}
		again := load(t, enc)
		if again == nil || !again.CreatedAt.Equal(s.CreatedAt) {
			t.Fatalf("snapshot changed through an encode and a load:\n%+v\n%+v", s, again)
		}
		a, b := *s, *again
		a.CreatedAt, b.CreatedAt = time.Time{}, time.Time{}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("snapshot changed through an encode and a load:\n%+v\n%+v", s, again)
		}
	})
}
