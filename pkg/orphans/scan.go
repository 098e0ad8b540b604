package orphans

import (
	"context"
	"slices"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Grace is how long after its commit a volume is not judged. The provisioner makes
// a volume's PersistentVolume only once CreateVolume has returned, and a restore or
// clone copied in the background returns to one of its retries, which back off up
// to 5 minutes: a volume younger than this has its PV on the way.
const Grace = 10 * time.Minute

// maxListTimeout bounds one listing (at 10,000 PVs: 20 pages, a few seconds).
const maxListTimeout = 2 * time.Minute

// Committed is a committed volume of a served pool, as the scan reads it from the
// engine: from memory, never from the volume's directory.
type Committed struct {
	ID        string
	Ephemeral bool
	// CreatedAt is its record's creation time (storage.Record.CreatedAt).
	CreatedAt time.Time
	// ClaimNamespace and ClaimName name the claim it was made for, when known: for
	// the log line that reports it.
	ClaimNamespace, ClaimName string
}

// Pool is one of the driver's pools at a scan.
type Pool struct {
	Name, Kind string
	// Served: the pool is served; its Volumes are then its committed volumes. A pool
	// not served is not judged: its index may be empty or old.
	Served  bool
	Volumes []Committed
}

// PoolCount is one served pool's figure.
type PoolCount struct {
	Pool, Kind string
	Orphans    int
}

// Status is what the scans found, for monitoring.
type Status struct {
	// Scanned: a scan has run.
	Scanned bool
	// OK: the last scan listed the PersistentVolumes. When it did not, Pools and
	// LastSuccess are still those of the last scan that did: stale.
	OK bool
	// LastSuccess is when the last successful scan listed them; zero before any.
	LastSuccess time.Time
	// Pools are the figures of the pools served at the last successful scan.
	Pools []PoolCount
}

// Config is how a Scanner scans.
type Config struct {
	// Interval between two scans.
	Interval time.Duration
	// Lister lists the driver's PersistentVolumes.
	Lister Lister
	// Pools reads the driver's pools.
	Pools func() []Pool
	// Now is the clock (nil: time.Now); Grace is Grace unless set. For tests.
	Now   func() time.Time
	Grace time.Duration
}

// Scanner counts, at each scan, the orphans of each served pool. It never deletes
// or moves anything.
type Scanner struct {
	cfg Config

	mu     sync.Mutex
	status Status
	// firstSeen is when a scan first found each committed volume: a volume filled
	// by a background copy is committed long after its record's creation time.
	// Volumes found by the first read have the zero time (committed before this
	// process started, as no copy survives a restart): their record's creation
	// time alone decides.
	firstSeen map[string]time.Time
	read      bool            // the pools have been read once
	reported  map[string]bool // the orphans already logged
	failures  int             // scans failed in a row
}

// New returns a Scanner; Run starts it.
func New(cfg Config) *Scanner {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Grace == 0 {
		cfg.Grace = Grace
	}
	return &Scanner{cfg: cfg, firstSeen: map[string]time.Time{}, reported: map[string]bool{}}
}

// Status returns what the scans found.
func (s *Scanner) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.Pools = slices.Clone(st.Pools)
	return st
}

// Run scans at once, then every Interval until ctx ends.
func (s *Scanner) Run(ctx context.Context) {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		_ = s.Scan(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Scan runs one scan. The PersistentVolumes are listed before the pools are read:
// a volume deleted in between is gone from the pools read after (its PV is
// deleted only after DeleteVolume), never taken for an orphan. A listing that
// fails keeps the last figures, marked stale, and is logged once per run of
// failures.
func (s *Scanner) Scan(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	lctx, cancel := context.WithTimeout(ctx, min(s.cfg.Interval, maxListTimeout))
	named, err := s.cfg.Lister.VolumeHandles(lctx)
	cancel()
	pools := s.cfg.Pools()
	now := s.cfg.Now()

	s.mu.Lock()
	defer s.mu.Unlock()
	s.observe(pools, now)
	s.status.Scanned = true
	if err != nil {
		s.status.OK = false
		if s.failures == 0 {
			keys := []any{"interval", s.cfg.Interval}
			if !s.status.LastSuccess.IsZero() {
				keys = append(keys, "lastSuccess", s.status.LastSuccess.UTC().Format(time.RFC3339))
			}
			logger.Error(err, "Orphan scan cannot list PersistentVolumes; the last figures are kept, marked stale, and it is tried again", keys...)
		}
		s.failures++
		return err
	}
	if s.failures > 0 {
		logger.Info("Orphan scan lists PersistentVolumes again", "failedScans", s.failures)
		s.failures = 0
	}
	var counts []PoolCount
	found := map[string]bool{}
	for _, p := range pools {
		if !p.Served {
			continue
		}
		c := PoolCount{Pool: p.Name, Kind: p.Kind}
		for _, v := range p.Volumes {
			settled := now.Sub(v.CreatedAt) >= s.cfg.Grace && now.Sub(s.firstSeen[v.ID]) >= s.cfg.Grace
			if !Orphaned(Volume{ID: v.ID, Ephemeral: v.Ephemeral, Settled: settled}, named) {
				continue
			}
			c.Orphans++
			found[v.ID] = true
			if !s.reported[v.ID] {
				logger.Info("Orphaned volume: no PersistentVolume names it; kubectl berth doctor --fix can move it to the trash",
					"volumeID", v.ID, "pool", p.Name, "claimNamespace", v.ClaimNamespace, "claimName", v.ClaimName,
					"createdAt", v.CreatedAt.UTC().Format(time.RFC3339))
			}
		}
		counts = append(counts, c)
	}
	s.reported = found
	s.status.OK, s.status.LastSuccess, s.status.Pools = true, now, counts
	logger.V(4).Info("Orphan scan done", "volumeHandles", len(named), "orphans", len(found))
	return nil
}

// observe notes when each committed volume of the served pools was first seen.
func (s *Scanner) observe(pools []Pool, now time.Time) {
	seen := make(map[string]time.Time, len(s.firstSeen))
	for _, p := range pools {
		if !p.Served {
			continue
		}
		for _, v := range p.Volumes {
			t, ok := s.firstSeen[v.ID]
			if !ok && s.read {
				t = now
			}
			seen[v.ID] = t
		}
	}
	s.firstSeen, s.read = seen, true
}
