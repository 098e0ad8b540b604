package storage_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/quota"
	"github.com/go-logr/logr/funcr"
	"k8s.io/klog/v2"
)

// logLines collects what an engine logs, one line per message.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) has(sub string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// startAuto starts an engine on one pool of kind auto at path, logging into l. It
// returns the engine and Start's error.
func startAuto(t *testing.T, path string, l *logLines) (*storage.Engine, error) {
	t.Helper()
	e, err := storage.New(storage.Config{Pools: []storage.PoolConfig{{Name: "default", Path: path, Kind: storage.KindAuto}}})
	if err != nil {
		t.Fatal(err)
	}
	logger := funcr.New(func(prefix, args string) {
		l.mu.Lock()
		l.lines = append(l.lines, prefix+" "+args)
		l.mu.Unlock()
	}, funcr.Options{})
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	t.Cleanup(func() { cancel(); e.Wait() })
	return e, e.Start(ctx)
}

// The embedded default pool is of kind auto. Where the filesystem under its path
// does not enforce project quotas (this machine, whose kernel has no quota support,
// or a tmpfs), it becomes a dir pool and says so: in the log, in its condition,
// in /readyz's notices, and in the kind it records for later starts.
func TestAutoPoolFallsBackVisibly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "default")
	if quota.Check(filepath.Dir(path)) == nil {
		t.Skip("the filesystem of the test's temp dir enforces project quotas: the quota guest tests the other side")
	}
	var l logLines
	e, err := startAuto(t, path, &l)
	if err != nil {
		t.Fatal(err)
	}
	p := e.DefaultPool()
	if err := e.Unserved(); err != nil {
		t.Fatalf("the fallen-back pool is not served: %v", err)
	}
	if p.Kind() != storage.KindDir {
		t.Fatalf("kind %q, want %q", p.Kind(), storage.KindDir)
	}
	why := p.SizesNotEnforced()
	if !errors.Is(why, storage.ErrSizesNotEnforced) || !strings.Contains(why.Error(), "prjquota") {
		t.Fatalf("SizesNotEnforced() = %v, want ErrSizesNotEnforced saying how to get enforcement", why)
	}
	probs := p.PoolProblems()
	if len(probs) != 1 || probs[0].Reason != "SizesNotEnforced" || probs[0].Kind != storage.Degraded {
		t.Fatalf("pool problems %+v, want one Degraded SizesNotEnforced", probs)
	}
	if n := e.Notices(); len(n) != 1 || !strings.HasPrefix(n[0], "SizesNotEnforced: pool default") {
		t.Fatalf("notices %q, want one naming the pool", n)
	}
	if !l.has("Pool kind chosen: volume sizes are NOT enforced") {
		t.Fatalf("no log line says sizes are not enforced: %q", l.lines)
	}
	rec, err := os.ReadFile(filepath.Join(path, "kind.json"))
	if err != nil || !strings.Contains(string(rec), `"kind":"dir"`) {
		t.Fatalf("kind.json: %q (err %v), want the dir kind recorded", rec, err)
	}
	mustCreate(t, p, "pvc-a", mib)
}

// The kind an auto pool chose is kept: a pool recorded as quota whose filesystem
// no longer enforces project quotas (remounted without prjquota) is refused, never
// served as a dir pool whose volumes would have no limits.
func TestAutoPoolKeepsItsKind(t *testing.T) {
	path := filepath.Join(t.TempDir(), "default")
	if quota.Check(filepath.Dir(path)) == nil {
		t.Skip("the filesystem of the test's temp dir enforces project quotas")
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(path, "kind.json"), []byte(`{"kind":"quota"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var l logLines
	e, err := startAuto(t, path, &l)
	if err != nil {
		t.Fatal(err)
	}
	if k := e.DefaultPool().Kind(); k != storage.KindQuota {
		t.Fatalf("kind %q, want the recorded %q", k, storage.KindQuota)
	}
	if err := e.Unserved(); err == nil || !strings.Contains(err.Error(), "cannot enforce sizes") {
		t.Fatalf("Unserved() = %v, want the quota pool refused", err)
	}
	if e.DefaultPool().SizesNotEnforced() != nil {
		t.Fatal("a refused quota pool reports itself as a dir pool")
	}
}

// A pool of kind auto whose record names no kind it knows does not start, and
// nothing in it changes.
func TestAutoPoolBadRecord(t *testing.T) {
	for _, tc := range []struct{ name, rec string }{
		{"unknown kind", `{"kind":"image"}`},
		{"not JSON", `quota`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "default")
			if err := os.MkdirAll(path, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(path, "kind.json"), []byte(tc.rec), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := startAuto(t, path, &logLines{})
			if !errors.Is(err, storage.ErrInvalid) || !strings.Contains(err.Error(), "kind.json") {
				t.Fatalf("Start = %v, want ErrInvalid naming kind.json", err)
			}
			entries, _ := os.ReadDir(path)
			if len(entries) != 1 {
				t.Fatalf("the pool's directory holds %d entries after a refused start, want kind.json alone", len(entries))
			}
		})
	}
}

// A dir pool made before kind auto existed stays a dir pool when the default
// becomes auto, whatever its filesystem can do: its volumes have no project IDs.
func TestAutoPoolKeepsExistingDirVolumes(t *testing.T) {
	base := t.TempDir()
	e, stop := startEngineStop(t, dirPool(base, "default"))
	old := mustCreate(t, e.DefaultPool(), "pvc-old", mib)
	stop()
	var l logLines
	e, err := startAuto(t, filepath.Join(base, "default"), &l)
	if err != nil {
		t.Fatal(err)
	}
	p := e.DefaultPool()
	if p.Kind() != storage.KindDir || !strings.Contains(p.SizesNotEnforced().Error(), "already holds") {
		t.Fatalf("kind %q (%v), want dir chosen for the volumes the pool holds", p.Kind(), p.SizesNotEnforced())
	}
	if _, err := p.Get(old.Hash()); err != nil {
		t.Fatal(err)
	}
}
