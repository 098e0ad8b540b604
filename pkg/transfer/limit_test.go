package transfer

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
)

// fakeClock advances only when slept on.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(_ context.Context, d time.Duration) error {
	c.advance(d)
	return nil
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

const mib = 1 << 20

// One writer, writes of every size: the time it takes is what the rate asks,
// less the first burst, and no more.
func TestLimiterRate(t *testing.T) {
	for _, rate := range []int64{64 << 10, mib, 100 * mib} {
		c := newFakeClock()
		l := NewLimiter(rate, c)
		start := c.Now()
		var total int64
		r := rand.New(rand.NewPCG(1, uint64(rate)))
		for total < 40*rate/10 { // four seconds' worth
			n := 1 + r.IntN(256<<10)
			if err := l.Wait(context.Background(), n); err != nil {
				t.Fatal(err)
			}
			total += int64(n)
		}
		el := c.Now().Sub(start).Seconds()
		burst := l.burst
		if min := (float64(total) - burst) / float64(rate); el < min*0.999 {
			t.Errorf("rate %d: %d bytes in %.3fs, faster than the rate allows (%.3fs)", rate, total, el, min)
		}
		if max := float64(total) / float64(rate); el > max*1.001 {
			t.Errorf("rate %d: %d bytes in %.3fs, slower than the rate (%.3fs)", rate, total, el, max)
		}
	}
}

// An idle limiter saves up one burst, not more.
func TestLimiterBurst(t *testing.T) {
	c := newFakeClock()
	l := NewLimiter(mib, c)
	if l.burst != 64<<10 {
		t.Fatalf("burst %v, want 64 KiB (a twentieth of a second's worth is less)", l.burst)
	}
	c.advance(time.Hour)
	if d := l.reserve(64 << 10); d != 0 {
		t.Errorf("a burst after an idle hour waits %v", d)
	}
	if d := l.reserve(mib); d != time.Second {
		t.Errorf("1 MiB more waits %v, want 1s", d)
	}
	if NewLimiter(0, c) != nil || NewLimiter(-1, c) != nil {
		t.Error("a limit of 0 or less is not nil")
	}
	var none *Limiter
	if err := none.Wait(context.Background(), 1<<30); err != nil {
		t.Error(err)
	}
}

// Writers sharing one limiter share its rate: together they wait as one would.
func TestLimiterShared(t *testing.T) {
	c := newFakeClock()
	l := NewLimiter(10*mib, c)
	var mu sync.Mutex
	var longest time.Duration
	var wg sync.WaitGroup
	const each = 5 * mib
	for range 4 {
		wg.Go(func() {
			for done := 0; done < each; done += 64 << 10 {
				d := l.reserve(64 << 10)
				mu.Lock()
				longest = max(longest, d)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	want := time.Duration((4*each - l.burst) / (10 * mib) * float64(time.Second))
	if diff := longest - want; diff < -time.Millisecond || diff > time.Millisecond {
		t.Errorf("the last of 4 writers waits %v, want %v", longest, want)
	}
}

// On the wire, for real: a server's limit and a client's, each measured as a
// throughput below the limit plus a tenth (a ratio, not a time: a slow machine
// only makes it lower).
func TestPullRateLimited(t *testing.T) {
	testutil.RequireRoot(t)
	src := t.TempDir()
	testutil.WriteRandom(t, filepath.Join(src, "f"), 6*mib)
	for _, tc := range []struct {
		name           string
		server, client int64
		limit          int64
	}{
		{"server limit", 4 * mib, 0, 4 * mib},
		{"client asks less", 16 * mib, 2 * mib, 2 * mib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := startServer(t, ServerOptions{RateLimit: tc.server})
			n.sources.add("vol", Source{Kind: KindTree, Path: src})
			o := n.pullOptions(t, "vol", filepath.Join(t.TempDir(), "data"))
			o.RateLimit = tc.client
			start := time.Now()
			res, err := Pull(testContext(t), o)
			if err != nil {
				t.Fatal(err)
			}
			rate := float64(res.Bytes) / time.Since(start).Seconds()
			t.Logf("%d bytes at %.2f MiB/s, limit %d MiB/s", res.Bytes, rate/mib, tc.limit/mib)
			if rate > 1.1*float64(tc.limit) {
				t.Errorf("%.2f MiB/s, over the limit of %d MiB/s by more than a tenth", rate/mib, tc.limit/mib)
			}
		})
	}
}
