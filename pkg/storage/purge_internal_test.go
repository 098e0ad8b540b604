package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/berth-csi/berth/pkg/storage/safefs"
)

// startDirPool starts an engine on a dir pool "default" in a temporary directory.
func startDirPool(t *testing.T) *Pool {
	t.Helper()
	return startInternal(t, PoolConfig{Name: "default", Path: filepath.Join(t.TempDir(), "pool"), Kind: KindDir}).DefaultPool()
}

// One trash entry that takes forever to remove (here: blocked until the test
// ends) does not keep the purger from the others; cancelling the engine's
// context stops it.
func TestPurgeEntriesIndependently(t *testing.T) {
	p := startDirPool(t)
	release := make(chan struct{})
	defer close(release)
	var mu sync.Mutex
	blocked := ""
	// The purger started with the engine may be listing the trash: it
	// starts workers under mu, so set remove under mu too.
	p.mu.Lock()
	p.remove = func(ctx context.Context, parent, name string) error {
		entry := filepath.Base(parent) // the data of an entry goes first
		if parent == filepath.Join(p.cfg.Path, trashDir) {
			entry = name
		}
		mu.Lock()
		if blocked == "" {
			blocked = entry
		}
		block := blocked == entry
		mu.Unlock()
		if block {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return safefs.RemoveTreeContext(ctx, parent, name)
	}
	p.mu.Unlock()
	const entries = 2*purgeWorkers + 1
	trash := filepath.Join(p.cfg.Path, trashDir)
	// Each entry is built beside the pool and renamed into the trash whole: the
	// purger may run at any moment and must never see one half made.
	staging := filepath.Join(filepath.Dir(p.cfg.Path), "staging")
	for k := range entries {
		name := fmt.Sprintf("%016x.deadbeef", k)
		data := filepath.Join(staging, name, DataDir)
		if err := os.MkdirAll(filepath.Join(data, "d"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(data, "d", "f"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(staging, name), filepath.Join(trash, name)); err != nil {
			t.Fatal(err)
		}
	}
	p.kickPurge()
	// A hang guard, not a timing criterion: the others need milliseconds.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		left, err := os.ReadDir(trash)
		if err != nil {
			t.Fatal(err)
		}
		if len(left) == 1 {
			mu.Lock()
			b := blocked
			mu.Unlock()
			if left[0].Name() != b {
				t.Fatalf("entry %s left, want the blocked one %s", left[0].Name(), b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d trash entries left behind a blocked one, want 1", len(left))
		}
	}
}
