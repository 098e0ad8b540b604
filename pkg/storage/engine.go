package storage

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"
)

// Publication is one place a volume is mounted on this node.
type Publication struct {
	TargetPath   string
	ReadOnly     bool
	SingleWriter bool // published with SINGLE_NODE_SINGLE_WRITER
	// Flags are the MS_ flags the publish asked for (mounter.ParseFlags), besides
	// read-only, nosuid and nodev, which every publish decides alone.
	Flags uintptr
	// Mode is the access mode it was published with.
	Mode AccessMode
	// Recovered: rebuilt from the mount table at start-up, which shows whether the
	// mount is read-only and its per-mount flags, but not what was asked (Flags,
	// Mode and SingleWriter are unknown) until the same publish comes again.
	Recovered bool
}

// Publication returns the publication of volume id at target, if the table has it.
func (e *Engine) Publication(id, target string) (Publication, bool) {
	e.pubMu.Lock()
	defer e.pubMu.Unlock()
	pub, ok := e.pubs[id][target]
	return pub, ok
}

// Engine is the host storage engine: the configured pools and the node's publication
// table. It knows nothing of CSI or gRPC.
type Engine struct {
	pools      []*Pool
	adoptRoots []AdoptRoot
	host       Host
	retry      time.Duration                // how often unserved pools are tried again
	scan       ProjectScan                  // bounds of the quota pools' project scans
	onServed   func(context.Context, *Pool) // told when an unserved pool becomes served
	byNm       map[string]*Pool
	ready      atomic.Bool
	bg         sync.WaitGroup // background goroutines, ended by Start's context

	pubMu sync.Mutex
	pubs  map[string]map[string]Publication // volume ID -> target -> publication

	node    *Node      // the node side in this process, nil without one (group snapshots need it)
	groupMu sync.Mutex // one group snapshot pauses its writers at a time (groupcreate.go)
}

// New builds an engine for a validated configuration on this machine. Nothing
// touches the disk until Start.
func New(cfg Config) (*Engine, error) { return NewWithHost(cfg, RealHost()) }

// NewWithHost builds an engine that reaches mounts, loop devices and child
// processes through host (the real machine's for what host leaves nil).
func NewWithHost(cfg Config, host Host) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	host, err := host.resolve()
	if err != nil {
		return nil, err
	}
	e := &Engine{byNm: map[string]*Pool{}, pubs: map[string]map[string]Publication{}, adoptRoots: cfg.AdoptRoots, host: host}
	projects, usage := newProjectIDs(), newUsageWalks()
	for _, pc := range cfg.Pools {
		p := newPool(pc, projects, usage, host)
		e.pools = append(e.pools, p)
		e.byNm[pc.Name] = p
		p.sibling = func(name string) *Pool { return e.byNm[name] }
	}
	return e, nil
}

// Start reconciles every pool (rolls back half-created volumes, finishes half-deleted
// ones, loads the index) and starts the purgers. The engine is Ready afterwards.
func (e *Engine) Start(ctx context.Context) error {
	for _, p := range e.pools {
		p.bgCtx, p.bg = ctx, &e.bg
		if err := p.open(ctx); err != nil {
			return err
		}
		if err := p.Health(); err != nil {
			klog.FromContext(ctx).Error(err, "Pool cannot be served; its volumes fail with Unavailable, the other pools serve, and it is tried again", "pool", p.Name(), "retryEvery", e.poolRetry())
		}
		e.bg.Add(1)
		go func() {
			defer e.bg.Done()
			p.purger(ctx)
		}()
		if _, ok := p.backend.(projectChecker); ok {
			e.bg.Add(1)
			go func() {
				defer e.bg.Done()
				p.projectScanner(ctx, e.scan.withDefaults())
			}()
		}
	}
	e.sweepGroupMembers(ctx)
	e.bg.Add(1)
	go func() {
		defer e.bg.Done()
		e.retryPools(ctx)
	}()
	e.ready.Store(true)
	klog.FromContext(ctx).Info("Storage engine ready", "pools", len(e.pools))
	return nil
}

// Wait returns once every background goroutine (purgers, snapshot and volume copies) has ended,
// after the context given to Start is cancelled. A copy interrupted this way leaves
// only its tmp/ entry, which the next start-up rolls back.
func (e *Engine) Wait() { e.bg.Wait() }

// Ready reports whether start-up reconciliation is complete.
func (e *Engine) Ready() bool { return e.ready.Load() }

// Pools returns the pools in configuration order.
func (e *Engine) Pools() []*Pool { return e.pools }

// DefaultPool is the first configured pool.
func (e *Engine) DefaultPool() *Pool { return e.pools[0] }

// Pool returns the named pool or ErrNotFound.
func (e *Engine) Pool(name string) (*Pool, error) {
	p, ok := e.byNm[name]
	if !ok {
		return nil, fmt.Errorf("pool %q is not configured on this node: %w", truncate(name), ErrPoolNotConfigured)
	}
	return p, nil
}

// Resolve validates a volume ID and returns its pool and hash. A hostile ID (one that
// is not even a valid name) is ErrInvalid; a harmless ID that is not in Berth's format,
// or names a pool this node does not have, is ErrNotFound: no such volume exists here.
func (e *Engine) Resolve(id string) (*Pool, string, error) {
	return e.resolveID("volume", id, ParseVolumeID)
}

// resolveID is Resolve for an ID of what kind parse reads.
func (e *Engine) resolveID(kind, id string, parse func(string) (ParsedID, error)) (*Pool, string, error) {
	if err := ValidateName(id); err != nil {
		return nil, "", fmt.Errorf("%s ID: %w", kind, err)
	}
	pid, err := parse(id)
	if err != nil {
		return nil, "", fmt.Errorf("%s %s is not in Berth's ID format: %w", kind, id, ErrNotFound)
	}
	p, err := e.Pool(pid.Pool)
	if err != nil {
		return nil, "", fmt.Errorf("%s %s: %w", kind, id, err)
	}
	return p, pid.Hash, nil
}

// Volume returns the record of a volume by ID.
func (e *Engine) Volume(id string) (*Pool, *Record, error) {
	p, hash, err := e.Resolve(id)
	if err != nil {
		return nil, nil, err
	}
	r, err := p.Get(hash)
	if err != nil {
		return nil, nil, fmt.Errorf("volume %s: %w", id, err)
	}
	return p, r, nil
}

// AllVolumes returns every committed volume's record sorted by ID.
func (e *Engine) AllVolumes() []*Record {
	var out []*Record
	for _, p := range e.pools {
		out = append(out, p.Records()...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// AddPublication records that volume id is mounted at target.
func (e *Engine) AddPublication(id string, pub Publication) {
	e.pubMu.Lock()
	defer e.pubMu.Unlock()
	m := e.pubs[id]
	if m == nil {
		m = map[string]Publication{}
		e.pubs[id] = m
	}
	m[pub.TargetPath] = pub
}

// RemovePublication forgets the mount of volume id at target.
func (e *Engine) RemovePublication(id, target string) {
	e.pubMu.Lock()
	defer e.pubMu.Unlock()
	delete(e.pubs[id], target)
	if len(e.pubs[id]) == 0 {
		delete(e.pubs, id)
	}
}

// Publications lists where volume id is mounted on this node, sorted by target.
func (e *Engine) Publications(id string) []Publication {
	e.pubMu.Lock()
	defer e.pubMu.Unlock()
	out := make([]Publication, 0, len(e.pubs[id]))
	for _, p := range e.pubs[id] {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TargetPath < out[j].TargetPath })
	return out
}

// PublishedAt lists the volumes the table records as published at target, sorted.
func (e *Engine) PublishedAt(target string) []string {
	e.pubMu.Lock()
	defer e.pubMu.Unlock()
	var ids []string
	for id, m := range e.pubs {
		if _, ok := m[target]; ok {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// publishedUnder lists the volumes the table records as published at a path
// starting with prefix, sorted.
func (e *Engine) publishedUnder(prefix string) []string {
	e.pubMu.Lock()
	defer e.pubMu.Unlock()
	var ids []string
	for id, m := range e.pubs {
		for target := range m {
			if strings.HasPrefix(target, prefix) {
				ids = append(ids, id)
				break
			}
		}
	}
	sort.Strings(ids)
	return ids
}

// Ephemeral finds the ephemeral inline volume created for kubelet's volume ID.
func (e *Engine) Ephemeral(kubeletVolumeID string) (*Pool, *Record, bool) {
	name := EphemeralName(kubeletVolumeID)
	for _, p := range e.pools {
		id := VolumeID(p.Name(), name)
		if r, ok := p.lookup(id[len(id)-hashLen:]); ok && r.Ephemeral {
			return p, r.Clone(), true
		}
	}
	return nil, nil, false
}

// Unserved returns the error of the first pool that cannot be served, or nil. Such a
// pool is tried again in the background (serve.go); UnservedPools names them all.
func (e *Engine) Unserved() error {
	for _, p := range e.pools {
		if err := p.Health(); err != nil {
			return err
		}
	}
	return nil
}

// ResolveSnapshot validates a snapshot ID and returns its pool and hash, with the same
// rules as Resolve: hostile IDs are ErrInvalid, harmless foreign ones ErrNotFound.
func (e *Engine) ResolveSnapshot(id string) (*Pool, string, error) {
	return e.resolveID("snapshot", id, ParseSnapshotID)
}

// AllSnapshots returns every snapshot (committed or being copied) sorted by ID.
func (e *Engine) AllSnapshots() []*Snapshot {
	var out []*Snapshot
	for _, p := range e.pools {
		out = append(out, p.Snapshots()...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
