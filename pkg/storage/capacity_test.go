package storage_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
)

func TestCapacityFollowsVolumes(t *testing.T) {
	p := newPool(t)
	const slack = 64 * mib
	fillPool(t, p, slack)
	want := slack
	var hashes []string
	for _, size := range []int64{mib, 5 * mib, 3*mib + 4096} {
		hashes = append(hashes, mustCreate(t, p, fmt.Sprintf("pvc-%d", size), size).Hash())
		want -= size
		if got := available(t, p); got != want {
			t.Fatalf("after creating %d bytes: available %d, want %d", size, got, want)
		}
	}
	mustCreate(t, p, fmt.Sprintf("pvc-%d", 5*mib), 5*mib) // idempotent: allocates nothing
	if got := available(t, p); got != want {
		t.Fatalf("after a repeated create: available %d, want %d", got, want)
	}
	for _, h := range hashes {
		mustDelete(t, p, h)
	}
	if got := available(t, p); got != slack {
		t.Fatalf("after deleting everything: available %d, want %d", got, slack)
	}
}

func TestCreateUntilFull(t *testing.T) {
	p := newPool(t)
	const slack = 10 * mib
	fillPool(t, p, slack)
	for i := range 10 {
		mustCreate(t, p, fmt.Sprintf("pvc-%d", i), mib)
	}
	_, err := p.Create(context.Background(), storage.CreateRequest{Name: "pvc-10", RequiredBytes: mib})
	checkErr(t, err, storage.ErrNoSpace)
	if got := available(t, p); got != 0 {
		t.Fatalf("full pool reports %d bytes available", got)
	}
	if _, err := p.Get(hashOf("default", "pvc-10")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("refused volume exists: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Join(p.Config().Path, "tmp"))
	if len(entries) != 0 {
		t.Fatalf("refused create left %d entries in tmp/", len(entries))
	}
}

// Without overcommit the sum of capacities stays within the filesystem's size; with it,
// each volume still has to fit the free space but their sum may exceed the size.
func TestOvercommit(t *testing.T) {
	tests := []struct {
		overcommit bool
		wantErr    error
	}{
		{overcommit: true, wantErr: nil},
		{overcommit: false, wantErr: storage.ErrNoSpace},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("overcommit=%v", tc.overcommit), func(t *testing.T) {
			cfg := dirPool(t.TempDir(), "default")
			cfg.Overcommit = tc.overcommit
			p := startEngine(t, cfg).DefaultPool()
			avail, maxVolume, err := p.Capacity()
			if err != nil {
				t.Fatal(err)
			}
			size := avail / 2
			var sum int64
			for i := 0; sum <= maxVolume && err == nil; i++ {
				if i == 1000 {
					t.Skip("filesystem too full to exceed its size quickly")
				}
				_, err = p.Create(context.Background(), storage.CreateRequest{Name: fmt.Sprintf("pvc-%d", i), RequiredBytes: size})
				if err == nil {
					sum += size
				}
			}
			checkErr(t, err, tc.wantErr)
		})
	}
}

func TestReservedBytesShrinkThePool(t *testing.T) {
	cfg := dirPool(t.TempDir(), "default")
	st := statfs(t, filepath.Dir(cfg.Path))
	cfg.ReservedBytes = int64(st.Blocks)*st.Bsize - 10*mib
	p := startEngine(t, cfg).DefaultPool()
	_, maxVolume, err := p.Capacity()
	if err != nil || maxVolume != 10*mib {
		t.Fatalf("maxVolume = %d (%v), want %d", maxVolume, err, 10*mib)
	}
	_, err = p.Create(context.Background(), storage.CreateRequest{Name: "pvc-1", RequiredBytes: 10*mib + 1})
	checkErr(t, err, storage.ErrOutOfRange)
}

// Racing creates on a nearly full pool: exactly as many succeed as fit, the others
// get ErrNoSpace, and the pool is never promised more than it has.
func TestConcurrentCreateNeverOverallocates(t *testing.T) {
	const fit, callers = 10, 64
	p := newPool(t)
	fillPool(t, p, fit*mib)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			_, errs[i] = p.Create(context.Background(), storage.CreateRequest{Name: fmt.Sprintf("pvc-%d", i), RequiredBytes: mib})
		})
	}
	wg.Wait()
	created := 0
	for i, err := range errs {
		switch {
		case err == nil:
			created++
		case !errors.Is(err, storage.ErrNoSpace):
			t.Errorf("pvc-%d: %v, want success or ErrNoSpace", i, err)
		}
	}
	if created != fit {
		t.Fatalf("%d of %d racing creates succeeded on a pool with room for %d", created, callers, fit)
	}
	if got := available(t, p); got != 0 {
		t.Fatalf("available = %d, want 0", got)
	}
}
