package storage_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
)

// twoPools starts an engine with dir pools "a" and "b".
func twoPools(t *testing.T) *storage.Engine {
	base := t.TempDir()
	return startEngine(t, dirPool(base, "a"), dirPool(base, "b"))
}

func TestReadyAfterStart(t *testing.T) {
	base := t.TempDir()
	e, err := storage.New(storage.Config{Pools: []storage.PoolConfig{dirPool(base, "a")}})
	if err != nil {
		t.Fatal(err)
	}
	if e.Ready() {
		t.Fatal("Ready before Start")
	}
	if _, err := os.Stat(filepath.Join(base, "a")); !os.IsNotExist(err) {
		t.Fatalf("New touched the disk: %v", err)
	}
	if e := startEngine(t, dirPool(base, "a")); !e.Ready() {
		t.Fatal("not Ready after Start")
	}
}

func TestResolve(t *testing.T) {
	e := twoPools(t)
	tests := []struct {
		name, id string
		wantPool string
		wantErr  error
	}{
		{name: "pool a", id: "b1-a-" + pvcHash, wantPool: "a"},
		{name: "pool b", id: "b1-b-" + pvcHash, wantPool: "b"},
		{name: "pool not on this node", id: "b1-c-" + pvcHash, wantErr: storage.ErrNotFound},
		{name: "pool prefix of a configured one", id: "b1-aa-" + pvcHash, wantErr: storage.ErrNotFound},
		// A harmless string in another format names no volume here (csi-sanity's IDs).
		{name: "short hash", id: "b1-a-xyz", wantErr: storage.ErrNotFound},
		{name: "uppercase hash", id: "b1-a-3B26AAD38065A2BC235D6FA655F32F71", wantErr: storage.ErrNotFound},
		{name: "other format", id: "csi-sanity-volume-1", wantErr: storage.ErrNotFound},
		{name: "wrong version", id: "b2-a-" + pvcHash, wantErr: storage.ErrNotFound},
		// A hostile ID is refused before any part of it is looked at.
		{name: "empty", id: "", wantErr: storage.ErrInvalid},
		{name: "path in pool", id: "b1-../a-" + pvcHash, wantErr: storage.ErrInvalid},
		{name: "slash", id: "a/b", wantErr: storage.ErrInvalid},
		{name: "NUL", id: "b1-a-" + pvcHash[:31] + "\x00", wantErr: storage.ErrInvalid},
		{name: "invalid UTF-8", id: "b1-\xff-" + pvcHash, wantErr: storage.ErrInvalid},
		{name: "4 KiB", id: "b1-a-" + strings.Repeat("0", 4096), wantErr: storage.ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, hash, err := e.Resolve(tc.id)
			checkErr(t, err, tc.wantErr)
			if err == nil && (p.Name() != tc.wantPool || hash != pvcHash) {
				t.Fatalf("Resolve = %s, %s", p.Name(), hash)
			}
		})
	}
}

func TestVolumeLookup(t *testing.T) {
	e := twoPools(t)
	pa, _ := e.Pool("a")
	r := mustCreate(t, pa, "pvc-1", mib)
	tests := []struct {
		name, id string
		wantErr  error
	}{
		{name: "existing", id: r.ID},
		{name: "same name in other pool", id: storage.VolumeID("b", "pvc-1"), wantErr: storage.ErrNotFound},
		{name: "unknown hash", id: "b1-a-" + pvcHash, wantErr: storage.ErrNotFound},
		{name: "unknown pool", id: storage.VolumeID("c", "pvc-1"), wantErr: storage.ErrNotFound},
		{name: "not a Berth ID", id: r.ID + "0", wantErr: storage.ErrNotFound},
		{name: "hostile", id: r.ID + "/..", wantErr: storage.ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, got, err := e.Volume(tc.id)
			checkErr(t, err, tc.wantErr)
			if err == nil && (p != pa || !reflect.DeepEqual(got, r)) {
				t.Fatalf("Volume = %s, %+v; want a, %+v", p.Name(), got, r)
			}
		})
	}
	_, err := e.Pool("c")
	checkErr(t, err, storage.ErrNotFound)
}

func TestAllVolumesSortedAcrossPools(t *testing.T) {
	e := twoPools(t)
	var want []string
	for i, p := range e.Pools() {
		for j := range 5 {
			want = append(want, mustCreate(t, p, fmt.Sprintf("pvc-%d-%d", i, j), mib).ID)
		}
	}
	sort.Strings(want)
	var got []string
	for _, r := range e.AllVolumes() {
		got = append(got, r.ID)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("AllVolumes = %v, want %v", got, want)
	}
}

func TestPublications(t *testing.T) {
	const id = "b1-a-" + pvcHash
	tests := []struct {
		name   string
		add    []storage.Publication
		remove []string
		want   []storage.Publication
	}{
		{name: "none"},
		{name: "sorted by target",
			add:  []storage.Publication{{TargetPath: "/t/c"}, {TargetPath: "/t/a", ReadOnly: true}, {TargetPath: "/t/b"}},
			want: []storage.Publication{{TargetPath: "/t/a", ReadOnly: true}, {TargetPath: "/t/b"}, {TargetPath: "/t/c"}}},
		{name: "same target replaces",
			add:  []storage.Publication{{TargetPath: "/t/a"}, {TargetPath: "/t/a", ReadOnly: true, SingleWriter: true}},
			want: []storage.Publication{{TargetPath: "/t/a", ReadOnly: true, SingleWriter: true}}},
		{name: "remove one",
			add:    []storage.Publication{{TargetPath: "/t/a"}, {TargetPath: "/t/b"}},
			remove: []string{"/t/a"},
			want:   []storage.Publication{{TargetPath: "/t/b"}}},
		{name: "remove all",
			add:    []storage.Publication{{TargetPath: "/t/a"}},
			remove: []string{"/t/a"}},
		{name: "remove unknown",
			add:    []storage.Publication{{TargetPath: "/t/a"}},
			remove: []string{"/t/z", "/t/a", "/t/a"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := twoPools(t)
			e.AddPublication("b1-b-"+pvcHash, storage.Publication{TargetPath: "/other"})
			for _, pub := range tc.add {
				e.AddPublication(id, pub)
			}
			for _, target := range tc.remove {
				e.RemovePublication(id, target)
			}
			if got := e.Publications(id); len(got) != len(tc.want) || len(got) > 0 && !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Publications = %+v, want %+v", got, tc.want)
			}
			if got := e.Publications("b1-b-" + pvcHash); len(got) != 1 {
				t.Fatalf("other volume's publications = %+v", got)
			}
		})
	}
}

func TestEphemeral(t *testing.T) {
	e := twoPools(t)
	pb, _ := e.Pool("b")
	eph, err := pb.Create(context.Background(), storage.CreateRequest{
		Name: storage.EphemeralName("csi-abc"), Ephemeral: true, RequiredBytes: mib, AccessType: storage.AccessMount,
	})
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, pb, "csi-def", mib)
	tests := []struct {
		name, kubeletID string
		wantOK          bool
	}{
		{name: "ephemeral volume", kubeletID: "csi-abc", wantOK: true},
		{name: "normal volume", kubeletID: "csi-def"},
		{name: "unknown", kubeletID: "csi-xyz"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, r, ok := e.Ephemeral(tc.kubeletID)
			if ok != tc.wantOK {
				t.Fatalf("Ephemeral(%s) ok = %v, want %v", tc.kubeletID, ok, tc.wantOK)
			}
			if ok && (p != pb || !reflect.DeepEqual(r, eph) || !r.Ephemeral) {
				t.Fatalf("Ephemeral(%s) = %v, %+v; want b, %+v", tc.kubeletID, p.Name(), r, eph)
			}
		})
	}
}

func TestCondition(t *testing.T) {
	tests := []struct {
		name       string
		damage     func(t *testing.T, p *storage.Pool, hash string)
		wantReason string // "" for healthy
		wantKind   string
	}{
		{name: "healthy"},
		{name: "pod wrote data", damage: func(t *testing.T, p *storage.Pool, hash string) {
			writeFile(t, filepath.Join(p.DataPath(hash), "f"), "x")
		}},
		{name: "data directory removed", damage: func(t *testing.T, p *storage.Pool, hash string) {
			if err := os.RemoveAll(p.DataPath(hash)); err != nil {
				t.Fatal(err)
			}
		}, wantReason: "DataMissing", wantKind: storage.Inaccessible},
		{name: "data directory replaced by a file", damage: func(t *testing.T, p *storage.Pool, hash string) {
			if err := os.RemoveAll(p.DataPath(hash)); err != nil {
				t.Fatal(err)
			}
			writeFile(t, p.DataPath(hash), "x")
		}, wantReason: "DataMissing", wantKind: storage.Inaccessible},
		{name: "data directory replaced by a symlink", damage: func(t *testing.T, p *storage.Pool, hash string) {
			if err := os.RemoveAll(p.DataPath(hash)); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(t.TempDir(), p.DataPath(hash)); err != nil {
				t.Fatal(err)
			}
		}, wantReason: "DataMissing", wantKind: storage.Inaccessible},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t)
			hash := mustCreate(t, p, "pvc-1", mib).Hash()
			if tc.damage != nil {
				tc.damage(t, p, hash)
			}
			got := p.Condition(hash)
			if tc.wantReason == "" {
				if len(got) != 0 {
					t.Fatalf("Condition = %+v, want healthy", got)
				}
				return
			}
			if len(got) != 1 || got[0].Reason != tc.wantReason || got[0].Kind != tc.wantKind || got[0].Message == "" {
				t.Fatalf("Condition = %+v, want one %s problem with reason %s", got, tc.wantKind, tc.wantReason)
			}
		})
	}
}

// Eight workers create and delete their own volumes concurrently; each keeps every
// tenth. The index then holds exactly the kept volumes and the accounting is exact.
func TestConcurrentCreateDelete(t *testing.T) {
	const workers, rounds = 8, 100
	p := newPool(t)
	fillPool(t, p, 128*mib)
	before := available(t, p)
	ballast := len(p.Records())
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				name := fmt.Sprintf("w%d-%d", w, i)
				r, err := p.Create(context.Background(), storage.CreateRequest{Name: name, RequiredBytes: mib})
				if err == nil && i%10 != 0 {
					err = p.Delete(context.Background(), r.Hash())
				}
				if err != nil {
					errs <- fmt.Errorf("%s: %w", name, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	want := map[string]bool{}
	for w := range workers {
		for i := 0; i < rounds; i += 10 {
			want[storage.VolumeID("default", fmt.Sprintf("w%d-%d", w, i))] = true
		}
	}
	got := map[string]bool{}
	for _, r := range p.Records() {
		if len(r.Name) < 8 || r.Name[:8] != "ballast-" {
			got[r.ID] = true
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Records holds %d volumes, want %d", len(got), len(want))
	}
	if got, wantAvail := available(t, p), before-int64(len(want))*mib; got != wantAvail {
		t.Fatalf("available = %d with %d volumes kept, want %d", got, len(want), wantAvail)
	}
	for id := range want {
		mustDelete(t, p, id[len(id)-32:])
	}
	if after := available(t, p); after != before || len(p.Records()) != ballast {
		t.Fatalf("after deleting all: available %d (before %d), %d records (want %d)", after, before, len(p.Records()), ballast)
	}
	for d, want := range map[string]int{"volumes": ballast, "tmp": 0} {
		if entries, _ := os.ReadDir(filepath.Join(p.Config().Path, d)); len(entries) != want {
			t.Errorf("%s/ holds %d entries, want %d", d, len(entries), want)
		}
	}
}

// TestNewWithPartialHostRefused: a host with some parts missing is refused, never
// completed with the real machine's (a fake would then make real mounts).
func TestNewWithPartialHostRefused(t *testing.T) {
	cfg := storage.Config{Pools: []storage.PoolConfig{dirPool(t.TempDir(), "a")}}
	partial := storage.RealHost()
	partial.Loops = nil
	if _, err := storage.NewWithHost(cfg, partial); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("partial host: err %v, want ErrInvalid", err)
	}
	if _, err := storage.NewWithHost(cfg, storage.Host{}); err != nil {
		t.Errorf("zero host (the real machine): %v", err)
	}
}
