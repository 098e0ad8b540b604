package storage

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeWalk counts walks, and blocks each one until released (or its ctx ends)
// when gate is set.
type fakeWalk struct {
	gate    chan struct{} // nil: no blocking
	started atomic.Int64
	running atomic.Int64
	peak    atomic.Int64
	stopped atomic.Int64 // walks that ended because their ctx did
}

func (f *fakeWalk) walk(ctx context.Context, dir string) (int64, int64, error) {
	f.started.Add(1)
	n := f.running.Add(1)
	defer f.running.Add(-1)
	for {
		p := f.peak.Load()
		if n <= p || f.peak.CompareAndSwap(p, n) {
			break
		}
	}
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			f.stopped.Add(1)
			return 0, 0, ctx.Err()
		}
	}
	return int64(len(dir)), 1, nil
}

// waitFor polls cond; the deadline guards against a hang and is no timing
// criterion.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting for %s", what)
		}
	}
}

func newFakeWalks(f *fakeWalk) *usageWalks {
	w := newUsageWalks()
	w.walk = f.walk
	return w
}

// A second call within the TTL is served from the first walk.
func TestUsageWalksCached(t *testing.T) {
	f := &fakeWalk{}
	w := newFakeWalks(f)
	for range 3 {
		if b, _, err := w.measure(context.Background(), "/vol/a"); err != nil || b != int64(len("/vol/a")) {
			t.Fatalf("measure = %d, %v", b, err)
		}
	}
	if n := f.started.Load(); n != 1 {
		t.Fatalf("%d walks for 3 calls within the TTL, want 1", n)
	}
	w.forget("/vol/a")
	if _, _, err := w.measure(context.Background(), "/vol/a"); err != nil {
		t.Fatal(err)
	}
	if n := f.started.Load(); n != 2 {
		t.Fatalf("%d walks after forget, want 2", n)
	}
}

// Callers of one volume share its walk; walks of different volumes run at most
// maxUsageWalks at a time.
func TestUsageWalksBounded(t *testing.T) {
	f := &fakeWalk{gate: make(chan struct{})}
	w := newFakeWalks(f)
	const vols, callers = maxUsageWalks + 3, 4
	var wg sync.WaitGroup
	errs := make(chan error, vols*callers)
	for v := range vols {
		for range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _, err := w.measure(context.Background(), fmt.Sprintf("/vol/%d", v))
				errs <- err
			}()
		}
	}
	waitFor(t, "the first walks", func() bool { return f.running.Load() == maxUsageWalks })
	close(f.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := f.started.Load(); n != vols {
		t.Errorf("%d walks for %d volumes with %d callers each, want %d", n, vols, callers, vols)
	}
	if p := f.peak.Load(); p > maxUsageWalks {
		t.Errorf("%d walks at once, want at most %d", p, maxUsageWalks)
	}
}

// A walk stops when its only caller goes away, and a caller waiting for a
// slot gives up when its ctx ends; with figures known, those are answered.
func TestUsageWalksCancelled(t *testing.T) {
	f := &fakeWalk{gate: make(chan struct{})}
	w := newFakeWalks(f)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, _, err := w.measure(ctx, "/vol/a")
		done <- err
	}()
	waitFor(t, "the walk", func() bool { return f.running.Load() == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("measure with its ctx cancelled = %v, want context.Canceled", err)
	}
	waitFor(t, "the walk to stop", func() bool { return f.stopped.Load() == 1 })

	// Known figures, expired: a caller that gives up gets them.
	close(f.gate)
	if _, _, err := w.measure(context.Background(), "/vol/a"); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	w.byDir["/vol/a"].at = time.Now().Add(-2 * w.ttl)
	w.mu.Unlock()
	for range maxUsageWalks {
		w.slots <- struct{}{} // every slot taken
	}
	ctx, cancel = context.WithCancel(context.Background())
	go func() {
		b, _, err := w.measure(ctx, "/vol/a")
		if err == nil && b != int64(len("/vol/a")) {
			err = fmt.Errorf("%d bytes", b)
		}
		done <- err
	}()
	waitFor(t, "the caller to wait", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		r := w.byDir["/vol/a"].run
		return r != nil && r.waiters == 1
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("measure waiting for a slot, cancelled, with figures known = %v, want them", err)
	}
}

// NodeGetVolumeStats of a dir volume, called again and again, walks it once.
func TestStatsServedFromRecentWalk(t *testing.T) {
	p := startDirPool(t)
	f := &fakeWalk{}
	p.usage.walk = f.walk // no walk yet: nothing was measured
	r, err := p.Create(context.Background(), CreateRequest{Name: "pvc-a", RequiredBytes: 1 << 20, AccessType: AccessMount})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := p.Usage(context.Background(), r.Hash()); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.started.Load(); n != 1 {
		t.Fatalf("%d walks for 5 calls, want 1", n)
	}
}
