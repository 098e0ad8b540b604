package transfer

import (
	"context"
	"sync"
	"time"
)

// Clock is the time a Limiter reads and waits on; tests use a fake one.
type Clock interface {
	Now() time.Time
	// Sleep waits for d, or until ctx ends (returning its error).
	Sleep(ctx context.Context, d time.Duration) error
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Limiter bounds a rate in bytes a second: a token bucket that fills at the rate
// up to a burst of a twentieth of a second's worth (at least 64 KiB). Callers
// reserve what they are about to send and sleep until the bucket covers it, so
// writers sharing one Limiter share its rate, in the order they asked.
type Limiter struct {
	rate  float64 // bytes a second
	burst float64
	clock Clock

	mu     sync.Mutex
	tokens float64 // may go negative: reserved ahead of the fill
	last   time.Time
}

// NewLimiter returns a Limiter of bytesPerSecond on clock (nil: the real one), or
// nil, which limits nothing, when bytesPerSecond is not positive.
func NewLimiter(bytesPerSecond int64, clock Clock) *Limiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	if clock == nil {
		clock = realClock{}
	}
	rate := float64(bytesPerSecond)
	burst := max(rate/20, 64<<10)
	return &Limiter{rate: rate, burst: burst, clock: clock, tokens: burst, last: clock.Now()}
}

// reserve takes n bytes from the bucket and returns how long the caller must
// wait before sending them.
func (l *Limiter) reserve(n int) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	if el := now.Sub(l.last); el > 0 {
		l.tokens = min(l.burst, l.tokens+el.Seconds()*l.rate)
		l.last = now
	}
	l.tokens -= float64(n)
	if l.tokens >= 0 {
		return 0
	}
	return time.Duration(-l.tokens / l.rate * float64(time.Second))
}

// Wait blocks until n more bytes may be sent, or ctx ends. A nil Limiter never
// waits.
func (l *Limiter) Wait(ctx context.Context, n int) error {
	if l == nil || n <= 0 {
		return nil
	}
	if d := l.reserve(n); d > 0 {
		return l.clock.Sleep(ctx, d)
	}
	return nil
}
