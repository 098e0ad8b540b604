package storage_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/berth-csi/berth/pkg/storage"
	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

const mib = int64(1) << 20

// purgeTimeout bounds how long a test waits for the background purger.
const purgeTimeout = 5 * time.Second

// dirPool is a dir pool called name under base.
func dirPool(base, name string) storage.PoolConfig {
	return storage.PoolConfig{Name: name, Path: filepath.Join(base, name), Kind: storage.KindDir}
}

// startEngine starts an engine on pools; it stops at cleanup (see startEngineStop).
func startEngine(t testing.TB, pools ...storage.PoolConfig) *storage.Engine {
	t.Helper()
	e, _ := startEngineStop(t, pools...)
	return e
}

// startEngineStop starts an engine on pools and returns it with its stop function, also
// run at cleanup: it waits for every pool's trash to drain, then stops the purgers, like
// a driver that exits once idle, so no purge races a restart or the temp dir's removal.
func startEngineStop(t testing.TB, pools ...storage.PoolConfig) (*storage.Engine, func()) {
	t.Helper()
	e, err := storage.New(storage.Config{Pools: pools})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logr.Discard()))
	var once sync.Once
	stop := func() {
		once.Do(func() {
			defer e.Wait()
			defer cancel()
			for _, p := range pools {
				waitEmpty(t, filepath.Join(p.Path, "trash"))
			}
		})
	}
	t.Cleanup(stop)
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return e, stop
}

// newPool starts an engine on one dir pool "default" under t.TempDir().
func newPool(t testing.TB) *storage.Pool {
	t.Helper()
	return startEngine(t, dirPool(t.TempDir(), "default")).DefaultPool()
}

// mustCreate creates a mount volume called name of size bytes in p.
func mustCreate(t testing.TB, p *storage.Pool, name string, size int64) *storage.Record {
	t.Helper()
	r, err := p.Create(context.Background(), storage.CreateRequest{
		Name: name, RequiredBytes: size, AccessType: storage.AccessMount,
	})
	if err != nil {
		t.Fatalf("Create %s: %v", name, err)
	}
	return r
}

func mustDelete(t testing.TB, p *storage.Pool, hash string) {
	t.Helper()
	if err := p.Delete(context.Background(), hash); err != nil {
		t.Fatalf("Delete %s: %v", hash, err)
	}
}

func available(t testing.TB, p *storage.Pool) int64 {
	t.Helper()
	a, _, err := p.Capacity()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func statfs(t testing.TB, path string) unix.Statfs_t {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// fillPool creates "ballast" volumes in p (a fresh pool without overcommit) until
// exactly slack bytes of its accounting are left, and checks that Capacity then reports
// slack. The host filesystem's free space, which drifts with everything else on the
// disk, is then far above the accounted limit, so Capacity moves only with the engine's
// own allocations. Reserving bytes cannot do this alone: the reserve is taken from the
// free space as well as from the size, so free space stays the tighter bound until the
// volumes allocate more than the filesystem already uses.
func fillPool(t testing.TB, p *storage.Pool, slack int64) {
	t.Helper()
	st := statfs(t, p.Config().Path)
	if free := int64(st.Bavail) * st.Bsize; free < 4*slack+256*mib {
		t.Skipf("%s has %d bytes free; need at least %d", p.Config().Path, free, 4*slack+256*mib)
	}
	var allocated int64
	for i := 0; ; i++ {
		avail, maxVolume, err := p.Capacity()
		if err != nil {
			t.Fatal(err)
		}
		remaining := maxVolume - slack - allocated
		if remaining == 0 {
			break
		}
		if i == 1000 {
			t.Fatalf("pool not filled after %d ballast volumes (%d bytes left)", i, remaining)
		}
		size := min(remaining, avail-avail/8)
		mustCreate(t, p, fmt.Sprintf("ballast-%d", i), size)
		allocated += size
	}
	if got := available(t, p); got != slack {
		t.Fatalf("after filling the pool, Capacity available = %d, want %d", got, slack)
	}
}

// hashOf is the directory name of volume name in pool.
func hashOf(pool, name string) string {
	id := storage.VolumeID(pool, name)
	return id[len(id)-32:]
}

// waitEmpty polls until dir has no entries (a missing dir counts as empty).
func waitEmpty(t testing.TB, dir string) {
	t.Helper()
	deadline := time.Now().Add(purgeTimeout)
	for {
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) || err == nil && len(entries) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still holds %d entries after %v (err %v)", dir, len(entries), purgeTimeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func assertContent(t testing.TB, path, want string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	if string(got) != want {
		t.Fatalf("%s holds %q, want %q", path, got, want)
	}
}

func assertMissing(t testing.TB, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s: Lstat error %v, want not exist", path, err)
	}
}

// errAny stands for "some error" where the code returns no sentinel.
var errAny = errors.New("any error")

// checkErr asserts err against a wanted sentinel (nil: success, errAny: any error).
func checkErr(t testing.TB, err, want error) {
	t.Helper()
	switch {
	case want == nil && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want == errAny && err == nil, want != nil && want != errAny && !errors.Is(err, want):
		t.Fatalf("error %v, want %v", err, want)
	}
}
