package storage

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

// fuzzPool is a dir pool "default" under a directory of f's, with the directory of
// volume testHash made, for targets that feed the pool its own files.
func fuzzPool(f *testing.F) *Pool {
	p := newPool(PoolConfig{Name: "default", Path: f.TempDir(), Kind: KindDir}, nil, newUsageWalks(), Host{})
	for _, d := range []string{p.VolumeDir(testHash), filepath.Join(p.cfg.Path, snapshotsDir, testHash)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			f.Fatal(err)
		}
	}
	return p
}

// quietCtx drops the logs of records refused on purpose.
var quietCtx = klog.NewContext(context.Background(), logr.Discard())

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// sameRecord reports whether two records mean the same: times at the same instant,
// no parameters and empty parameters alike.
func sameRecord(a, b Record) bool {
	if !a.CreatedAt.Equal(b.CreatedAt) {
		return false
	}
	a.CreatedAt, b.CreatedAt = time.Time{}, time.Time{}
	if len(a.Parameters) == 0 && len(b.Parameters) == 0 {
		a.Parameters, b.Parameters = nil, nil
	}
	return reflect.DeepEqual(a, b)
}

// FuzzReadRecord: a record the pool loads from volumes/<hash>/record.json belongs
// there: its ID names this pool and this directory, so the ID ListVolumes reports
// finds the volume again (and Hash() is safe to call). Re-encoded and loaded again,
// it is the same record.
func FuzzReadRecord(f *testing.F) {
	valid := &Record{Version: recordVersion, ID: "b1-default-" + testHash, Name: "pvc-1", Pool: "default",
		CapacityBytes: 1 << 20, AccessType: AccessMount, Parameters: map[string]string{"pool": "default"},
		ContentSource: &Source{Kind: "snapshot", ID: "s1-default-" + testHash}, CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)}
	data, err := encodeRecord(valid)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	for _, s := range []string{
		`{"version":1,"id":"b1-default-` + testHash + `","pool":"default","createdAt":"2026-01-02T03:04:05+01:00"}`,
		`{"version":1,"id":"b1-default-` + testHash + `","pool":"default","parameters":{}}`,
		`{"version":1,"id":"x","pool":"default"}`,
		`{"version":2}`, `{"version":1,"pool":"default","id":"b1-default-` + testHash + `","capacityBytes":-1}`,
		`null`, `[]`, ``, `{"version":1,"Version":2}`,
	} {
		f.Add([]byte(s))
	}
	p := fuzzPool(f)
	path := filepath.Join(p.VolumeDir(testHash), recordFile)
	load := func(t *testing.T, data []byte) *Record {
		t.Helper()
		writeFile(t, path, data)
		index, _, err := p.scanVolumes(quietCtx)
		if err != nil {
			t.Fatal(err)
		}
		return index[testHash]
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := load(t, data)
		if r == nil {
			return
		}
		// Its ID is how every call finds it again: it must name this pool and hash.
		id, err := ParseVolumeID(r.ID)
		if err != nil || id.Pool != "default" || id.Hash != testHash || r.Pool != "default" || r.Version != recordVersion {
			t.Fatalf("pool default loaded from volumes/%s a record that is not its own: %+v (ID: %+v, %v)", testHash, r, id, err)
		}
		enc, err := encodeRecord(r)
		if err != nil {
			t.Fatalf("loaded record %+v does not encode: %v", r, err)
		}
		again := load(t, enc)
		if again == nil || !sameRecord(*r, *again) {
			t.Fatalf("record changed through an encode and a load:\n%+v\n%+v", r, again)
		}
	})
}
