package storage_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"sync/atomic"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
)

func TestStartCreatesLayout(t *testing.T) {
	p := newPool(t)
	for _, d := range []string{"", "volumes", "tmp", "trash"} {
		fi, err := os.Lstat(filepath.Join(p.Config().Path, d))
		if err != nil {
			t.Fatal(err)
		}
		if !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s/%s: mode %v, want a directory with 0700", p.Config().Path, d, fi.Mode())
		}
	}
}

func TestCreate(t *testing.T) {
	fsTotal := func() int64 { st := statfs(t, os.TempDir()); return int64(st.Blocks) * st.Bsize }()
	mount := func(name string, required, limit int64) storage.CreateRequest {
		return storage.CreateRequest{Name: name, RequiredBytes: required, LimitBytes: limit, AccessType: storage.AccessMount}
	}
	withParams := func(r storage.CreateRequest, kv ...string) storage.CreateRequest {
		r.Parameters = map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			r.Parameters[kv[i]] = kv[i+1]
		}
		return r
	}
	tests := []struct {
		name         string
		setup        *storage.CreateRequest // created first; must succeed
		req          storage.CreateRequest
		wantErr      error
		wantCapacity int64
	}{
		{name: "required bytes", req: mount("pvc-1", 5*mib, 0), wantCapacity: 5 * mib},
		{name: "required within limit", req: mount("pvc-1", 5*mib, 8*mib), wantCapacity: 5 * mib},
		{name: "no size takes the default", req: mount("pvc-1", 0, 0), wantCapacity: storage.DefaultCapacityBytes},
		{name: "limit only, below the default", req: mount("pvc-1", 0, 3*mib), wantCapacity: 3 * mib},
		{name: "limit only, above the default", req: mount("pvc-1", 0, 4<<30), wantCapacity: storage.DefaultCapacityBytes},
		{name: "ephemeral", req: storage.CreateRequest{Name: storage.EphemeralName("csi-abc"), Ephemeral: true,
			RequiredBytes: mib, AccessType: storage.AccessMount}, wantCapacity: mib},
		{name: "same request again", setup: ptr(mount("pvc-1", 5*mib, 0)), req: mount("pvc-1", 5*mib, 0), wantCapacity: 5 * mib},
		{name: "same request again without size", setup: ptr(mount("pvc-1", 0, 0)), req: mount("pvc-1", 0, 0),
			wantCapacity: storage.DefaultCapacityBytes},
		{name: "smaller required fits existing", setup: ptr(mount("pvc-1", 5*mib, 0)), req: mount("pvc-1", 2*mib, 0),
			wantCapacity: 5 * mib},
		{name: "nil and empty parameters match", setup: ptr(mount("pvc-1", mib, 0)), req: withParams(mount("pvc-1", mib, 0)),
			wantCapacity: mib},
		{name: "same parameters", setup: ptr(withParams(mount("pvc-1", mib, 0), "a", "1")),
			req: withParams(mount("pvc-1", mib, 0), "a", "1"), wantCapacity: mib},
		{name: "larger required", setup: ptr(mount("pvc-1", 5*mib, 0)), req: mount("pvc-1", 6*mib, 0), wantErr: storage.ErrExists},
		{name: "limit below existing", setup: ptr(mount("pvc-1", 5*mib, 0)), req: mount("pvc-1", mib, 4*mib), wantErr: storage.ErrExists},
		{name: "different parameters", setup: ptr(withParams(mount("pvc-1", mib, 0), "a", "1")),
			req: withParams(mount("pvc-1", mib, 0), "a", "2"), wantErr: storage.ErrExists},
		{name: "parameters added", setup: ptr(mount("pvc-1", mib, 0)), req: withParams(mount("pvc-1", mib, 0), "a", "1"),
			wantErr: storage.ErrExists},
		{name: "different access type", setup: ptr(mount("pvc-1", mib, 0)),
			req: storage.CreateRequest{Name: "pvc-1", RequiredBytes: mib}, wantErr: storage.ErrExists},
		{name: "different fs type", setup: ptr(mount("pvc-1", mib, 0)),
			req:     storage.CreateRequest{Name: "pvc-1", RequiredBytes: mib, AccessType: storage.AccessMount, FSType: "xfs"},
			wantErr: storage.ErrExists},
		{name: "source added", setup: ptr(mount("pvc-1", mib, 0)),
			req: storage.CreateRequest{Name: "pvc-1", RequiredBytes: mib, AccessType: storage.AccessMount,
				Source: &storage.Source{Kind: "volume", ID: "b1-default-" + pvcHash}}, wantErr: storage.ErrExists},
		{name: "required above limit", req: mount("pvc-1", 2*mib, mib), wantErr: storage.ErrInvalid},
		{name: "negative required", req: mount("pvc-1", -1, 0), wantErr: storage.ErrInvalid},
		{name: "negative limit", req: mount("pvc-1", 0, -1), wantErr: storage.ErrInvalid},
		{name: "larger than the filesystem", req: mount("pvc-1", fsTotal+1, 0), wantErr: storage.ErrOutOfRange},
		{name: "block on a dir pool", req: storage.CreateRequest{Name: "pvc-1", RequiredBytes: mib, AccessType: storage.AccessBlock},
			wantErr: storage.ErrUnsupported},
		{name: "empty name", req: mount("", mib, 0), wantErr: storage.ErrInvalid},
		{name: "name with dot-dot", req: mount("a..b", mib, 0), wantErr: storage.ErrInvalid},
		{name: "name with slash", req: mount("../x", mib, 0), wantErr: storage.ErrInvalid},
		{name: "ephemeral name, not ephemeral", req: mount(storage.EphemeralName("csi-abc"), mib, 0), wantErr: storage.ErrInvalid},
		{name: "ephemeral without the prefix", req: storage.CreateRequest{Name: "csi-abc", Ephemeral: true, RequiredBytes: mib},
			wantErr: storage.ErrInvalid},
		{name: "ephemeral with a bad id", req: storage.CreateRequest{Name: storage.EphemeralName("../x"), Ephemeral: true,
			RequiredBytes: mib}, wantErr: storage.ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t)
			ctx := context.Background()
			var first *storage.Record
			if tc.setup != nil {
				var err error
				if first, err = p.Create(ctx, *tc.setup); err != nil {
					t.Fatalf("setup: %v", err)
				}
			}
			r, err := p.Create(ctx, tc.req)
			checkErr(t, err, tc.wantErr)
			if err != nil {
				if r != nil {
					t.Errorf("error %v came with a record %+v", err, r)
				}
				want := 0
				if first != nil {
					want = 1
				}
				if got := len(p.Records()); got != want {
					t.Fatalf("after a failed create the pool lists %d volumes, want %d", got, want)
				}
				return
			}
			if want := storage.VolumeID("default", tc.req.Name); r.ID != want || r.Hash() != want[len(want)-32:] {
				t.Errorf("ID = %s, want %s", r.ID, want)
			}
			if r.CapacityBytes != tc.wantCapacity || r.Name != tc.req.Name || r.Pool != "default" ||
				r.Ephemeral != tc.req.Ephemeral || r.CreatedAt.IsZero() {
				t.Errorf("record = %+v, want capacity %d", r, tc.wantCapacity)
			}
			if first != nil && !reflect.DeepEqual(r, first) {
				t.Errorf("repeated create returned %+v, want the first record %+v", r, first)
			}
			if got, err := p.Get(r.Hash()); err != nil || !reflect.DeepEqual(got, r) {
				t.Errorf("Get = %+v, %v; want %+v", got, err, r)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestRecordOnDisk(t *testing.T) {
	p := newPool(t)
	src, err := p.Create(context.Background(), storage.CreateRequest{Name: "origin", RequiredBytes: mib, AccessType: storage.AccessMount})
	if err != nil {
		t.Fatal(err)
	}
	r, err := p.Create(context.Background(), storage.CreateRequest{
		Name: "pvc-1", RequiredBytes: 3 * mib, AccessType: storage.AccessMount, FSType: "ext4",
		Parameters: map[string]string{"pool": "default"}, Source: &storage.Source{Kind: "volume", ID: src.ID},
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := p.VolumeDir(r.Hash())
	fi, err := os.Stat(p.DataPath(r.Hash()))
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != storage.DataDirMode {
		t.Fatalf("data directory: %v, %v; want a directory with mode %o", fi.Mode(), err, storage.DataDirMode)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "record.json"))
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatalf("record.json is not JSON: %v\n%s", err, raw)
	}
	var keys []string
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	want := []string{"accessType", "capacityBytes", "contentSource", "createdAt", "fsType", "id", "name", "parameters", "pool", "version"}
	if !reflect.DeepEqual(keys, want) {
		t.Errorf("record.json keys = %v, want %v", keys, want)
	}
	var onDisk storage.Record
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&onDisk); err != nil {
		t.Fatal(err)
	}
	if onDisk.Version != 1 || !reflect.DeepEqual(&onDisk, r) {
		t.Errorf("record.json = %+v, want %+v", onDisk, *r)
	}
	if fi, err := os.Stat(filepath.Join(dir, "record.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("record.json mode %v (%v), want 0600", fi.Mode(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("volume directory holds %d entries, want record.json and data", len(entries))
	}
}

// The engine's index must not share memory with a request or a returned record.
func TestRecordsAreCopies(t *testing.T) {
	p := newPool(t)
	origin, err := p.Create(context.Background(), storage.CreateRequest{Name: "origin", RequiredBytes: mib, AccessType: storage.AccessMount})
	if err != nil {
		t.Fatal(err)
	}
	src := &storage.Source{Kind: "volume", ID: origin.ID}
	params := map[string]string{"a": "1"}
	req := storage.CreateRequest{Name: "pvc-1", RequiredBytes: mib, AccessType: storage.AccessMount, Parameters: params, Source: src}
	r, err := p.Create(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	src.ID, params["a"] = "snap-2", "2"
	r.Parameters["a"], r.ContentSource.ID, r.CapacityBytes = "3", "snap-3", 1
	got, err := p.Get(r.Hash())
	if err != nil {
		t.Fatal(err)
	}
	if got.ContentSource.ID != origin.ID || got.Parameters["a"] != "1" || got.CapacityBytes != mib {
		t.Fatalf("index changed through caller memory: %+v source %+v", got, *got.ContentSource)
	}
	retry := storage.CreateRequest{Name: "pvc-1", RequiredBytes: mib, AccessType: storage.AccessMount,
		Parameters: map[string]string{"a": "1"}, Source: &storage.Source{Kind: "volume", ID: origin.ID}}
	if _, err := p.Create(context.Background(), retry); err != nil {
		t.Fatalf("retry of the original request: %v", err)
	}
}

func TestDelete(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, p *storage.Pool) string // returns the hash to delete
	}{
		{name: "committed volume", setup: func(t *testing.T, p *storage.Pool) string {
			r := mustCreate(t, p, "pvc-1", mib)
			writeFile(t, filepath.Join(p.DataPath(r.Hash()), "sub", "file"), "pod data")
			return r.Hash()
		}},
		{name: "missing hash", setup: func(*testing.T, *storage.Pool) string { return pvcHash }},
		{name: "deleted twice", setup: func(t *testing.T, p *storage.Pool) string {
			r := mustCreate(t, p, "pvc-1", mib)
			mustDelete(t, p, r.Hash())
			return r.Hash()
		}},
		{name: "directory removed by hand", setup: func(t *testing.T, p *storage.Pool) string {
			r := mustCreate(t, p, "pvc-1", mib)
			if err := os.RemoveAll(p.VolumeDir(r.Hash())); err != nil {
				t.Fatal(err)
			}
			return r.Hash()
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t)
			keep := mustCreate(t, p, "keep", mib)
			hash := tc.setup(t, p)
			if err := p.Delete(context.Background(), hash); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if _, err := p.Get(hash); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("Get after Delete: %v, want ErrNotFound", err)
			}
			if rs := p.Records(); len(rs) != 1 || rs[0].ID != keep.ID {
				t.Errorf("Records after Delete = %v, want only %s", rs, keep.ID)
			}
			assertMissing(t, p.VolumeDir(hash))
			waitEmpty(t, filepath.Join(p.Config().Path, "trash"))
			if _, err := p.Get(keep.Hash()); err != nil {
				t.Errorf("other volume: %v", err)
			}
			again := mustCreate(t, p, "pvc-1", 2*mib)
			if again.CapacityBytes != 2*mib {
				t.Errorf("re-created volume has capacity %d, want %d", again.CapacityBytes, 2*mib)
			}
		})
	}
}

// A create whose commit fails (the directory name is taken by a volume whose record is
// unreadable) returns the error and rolls back exactly what it did.
func TestCreateRollsBackFailedCommit(t *testing.T) {
	p := newPool(t)
	fillPool(t, p, 64*mib)
	squatter := p.VolumeDir(hashOf("default", "pvc-1"))
	writeFile(t, filepath.Join(squatter, "record.json"), "{")
	writeFile(t, filepath.Join(squatter, "data", "file"), "pod data")
	if _, err := p.Create(context.Background(), storage.CreateRequest{Name: "pvc-1", RequiredBytes: mib}); err == nil {
		t.Fatal("Create over an occupied directory succeeded")
	}
	if got := available(t, p); got != 64*mib {
		t.Errorf("available after a failed create = %d, want %d", got, 64*mib)
	}
	if es, _ := os.ReadDir(filepath.Join(p.Config().Path, "tmp")); len(es) != 0 {
		t.Errorf("failed create left %d entries in tmp/", len(es))
	}
	if _, err := p.Get(hashOf("default", "pvc-1")); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Get after a failed create: %v, want ErrNotFound", err)
	}
	assertContent(t, filepath.Join(squatter, "record.json"), "{")
	assertContent(t, filepath.Join(squatter, "data", "file"), "pod data")
}

func TestUsage(t *testing.T) {
	p := newPool(t)
	r := mustCreate(t, p, "pvc-1", 8*mib)
	writeFile(t, filepath.Join(p.DataPath(r.Hash()), "a", "f"), string(make([]byte, 64<<10)))
	u, err := p.Usage(context.Background(), r.Hash())
	if err != nil {
		t.Fatal(err)
	}
	if u.TotalBytes != 8*mib || u.UsedBytes < 64<<10 || u.UsedBytes+u.AvailableBytes > 8*mib || u.UsedInodes < 2 {
		t.Fatalf("Usage = %+v", u)
	}
	_, err = p.Usage(context.Background(), pvcHash)
	checkErr(t, err, storage.ErrNotFound)
}

// benchPool is a dir pool on a real disk (/var/tmp), not tmpfs, removed at the end.
func benchPool(b *testing.B) *storage.Pool {
	base, err := os.MkdirTemp("/var/tmp", "berth-bench-")
	if err != nil {
		b.Skip(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(base) })
	return startEngine(b, dirPool(base, "bench")).DefaultPool()
}

func BenchmarkCreateDelete(b *testing.B) {
	p := benchPool(b)
	ctx := context.Background()
	for i := 0; b.Loop(); i++ {
		r, err := p.Create(ctx, storage.CreateRequest{Name: fmt.Sprintf("bench-%d", i), RequiredBytes: mib})
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Delete(ctx, r.Hash()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCreateDeleteParallel(b *testing.B) {
	p := benchPool(b)
	ctx := context.Background()
	var n atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r, err := p.Create(ctx, storage.CreateRequest{Name: fmt.Sprintf("bench-%d", n.Add(1)), RequiredBytes: mib})
			if err != nil {
				b.Error(err)
				return
			}
			if err := p.Delete(ctx, r.Hash()); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
