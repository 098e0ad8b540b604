package storage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/berth-csi/berth/pkg/storage/clone"
	"github.com/berth-csi/berth/pkg/storage/meta"
	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// On-disk layout of a pool (see docs/design.md):
//
//	<path>/volumes/<hash>/record.json  committed volume: its record ...
//	<path>/volumes/<hash>/data/        ... and its data (what pods see)
//	<path>/tmp/<hash>.<rand>/          a volume being built; rolled back at start-up
//	<path>/trash/<hash>.<rand>/        a deleted volume being purged
//
// A volume exists exactly when volumes/<hash> exists: creation commits by renaming a
// complete directory from tmp/ into volumes/, deletion by renaming it out to trash/.
const (
	volumesDir = "volumes"
	tmpDir     = "tmp"
	trashDir   = "trash"
	// DataDir is the directory inside a volume that is published to pods.
	DataDir = "data"
)

// Pool is one configured pool: a backend plus the engine's bookkeeping.
type Pool struct {
	cfg      PoolConfig
	kind     string // cfg.Kind, or what an auto pool resolved to (autokind.go)
	backend  Backend
	volSync  *meta.DirSyncer
	projects *projectIDs // shared by the engine's pools
	host     Host

	mu           sync.Mutex
	index        map[string]*Record // committed volumes by hash
	damaged      map[string]damage  // volume directories without a readable record, by hash (damaged.go)
	allocated    int64              // sum of committed and reserved capacities
	inflight     int64              // the reserved part of allocated: not committed yet
	healthErr    error              // non-nil: the pool cannot be served
	healthReason string             // why, from a small fixed set (stats.go); "" when served
	loaded       bool               // open got past mounting: the layout and index are loaded
	purge        chan struct{}
	purging      map[string]bool // trash entries being purged, by name (under mu)
	purgeMore    bool            // an entry waits for a purge worker (under mu)
	// remove removes a trash entry's tree (safefs.RemoveTreeContext).
	remove func(ctx context.Context, parent, name string) error
	usage  *usageWalks // shared by the engine's pools

	bgCtx context.Context // the engine's lifetime: background copies stop with it
	bg    *sync.WaitGroup // the engine's background goroutines

	copies  map[string]*volumeCopy  // volumes whose content is copied in the background, by hash (under mu)
	resyncs map[string]*resyncJob   // volumes being resynced in the background, by hash (under mu; resync.go)
	remote  Remote                  // other nodes' pools, for sources this node lacks (remote.go); nil: none
	sibling func(name string) *Pool // the engine's pool of that name, nil when none (restores from backups)
	baseMu  sync.Mutex              // the image volumes' backup bases (backupbase.go)
	exports map[string]int          // volumes and snapshots being read by Exports, by ID (under mu; transfersource.go)
	backups map[string]int          // volumes being backed up, by ID (under mu; backup.go)

	snaps   snapshotState
	reflink atomic.Bool // copies are reflinks (FICLONE works in this pool)

	notEnforced error // an auto pool that became a dir pool: why (under mu)

	findings      map[string]projectFindings // what the project scans found, by hash (under mu; projectscan.go)
	projectResets atomic.Int64               // entries whose project ID the scans reset

	frozen   atomic.Int64        // filesystems frozen for a copy right now (freeze.go)
	observed map[string]observed // the last usage and health the node measured, by hash (under mu; stats.go)
}

func newPool(cfg PoolConfig, projects *projectIDs, usage *usageWalks, host Host) *Pool {
	return &Pool{
		usage:    usage,
		projects: projects,
		host:     host,
		cfg:      cfg,
		kind:     cfg.Kind,
		backend:  backends[cfg.Kind](cfg, host),
		volSync:  meta.NewDirSyncer(filepath.Join(cfg.Path, volumesDir)),
		index:    map[string]*Record{},
		damaged:  map[string]damage{},
		copies:   map[string]*volumeCopy{},
		resyncs:  map[string]*resyncJob{},
		exports:  map[string]int{},
		backups:  map[string]int{},
		findings: map[string]projectFindings{},
		observed: map[string]observed{},
		purge:    make(chan struct{}, 1),
		purging:  map[string]bool{},
		remove:   safefs.RemoveTreeContext,
		snaps:    snapshotState{snaps: map[string]*Snapshot{}, building: map[string]*build{}, damaged: map[string]damage{}},
	}
}

// Name is the pool's configured name.
func (p *Pool) Name() string { return p.cfg.Name }

// Config returns the pool's configuration.
func (p *Pool) Config() PoolConfig { return p.cfg }

// SupportsBlock reports whether the pool's kind can serve raw block volumes.
func (p *Pool) SupportsBlock() bool { return p.backend.SupportsBlock() }

// Params lists the StorageClass parameters the pool's kind understands, besides "pool".
func (p *Pool) Params() []string { return p.backend.Params() }

// Health is nil when the pool is served, else why it is not.
func (p *Pool) Health() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.healthErr
}

// Shared reports whether the pool's root is shared by several hosts (its kind
// serves multi-node access modes).
func (p *Pool) Shared() bool { return p.backend.MultiNode() }

// alignSize rounds a size up to the kind's size step. A size whose rounding would
// pass the largest int64 is ErrOutOfRange: no pool holds it, and the overflowed sum
// would be a negative size.
func (p *Pool) alignSize(n int64) (int64, error) {
	step := p.backend.SizeStep()
	if n > math.MaxInt64-(step-1) {
		return 0, errorf(ErrOutOfRange, "%d bytes cannot be rounded up to pool %s's %d-byte steps: the largest size it can serve is %d bytes",
			n, p.cfg.Name, step, math.MaxInt64/step*step)
	}
	return (n + step - 1) / step * step, nil
}

// VolumeDir is the directory of the volume with this (validated) hash.
func (p *Pool) VolumeDir(hash string) string { return filepath.Join(p.cfg.Path, volumesDir, hash) }

// DataPath is the directory published to pods for the volume with this hash.
func (p *Pool) DataPath(hash string) string { return filepath.Join(p.VolumeDir(hash), DataDir) }

// open creates the layout, rolls back half-created volumes, schedules half-deleted ones
// for purging and loads the index. It is the start-up reconciliation of one pool, and
// what serves a pool again (reopen): a pool loaded before is read again from disk.
// A shared pool's path gets nothing created in it until its filesystem is mounted
// there (EnsureMounted); the pool is served (its health set) once all of this is done.
func (p *Pool) open(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithValues("pool", p.cfg.Name)
	if p.kind == KindAuto {
		// Once per process, before anything uses the backend: the engine serves
		// nothing until Start has opened every pool.
		if err := p.resolveAuto(ctx); err != nil {
			return err
		}
	}
	if _, mounts := p.backend.(poolMounter); !mounts {
		if err := os.MkdirAll(p.cfg.Path, 0o700); err != nil {
			return fmt.Errorf("pool %s: %w", p.cfg.Name, err)
		}
	}
	if err := p.EnsureMounted(ctx); err != nil {
		// Never lay a shared pool out on the node's own disk.
		p.setHealth(err, ReasonMountFailed)
		return nil
	}
	for _, d := range []string{volumesDir, tmpDir, trashDir, snapshotsDir, groupsDir} {
		if err := os.Mkdir(filepath.Join(p.cfg.Path, d), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("pool %s: %w", p.cfg.Name, err)
		}
	}
	checked := p.backend.Check(ctx, p)
	// Half-created volumes: never acknowledged, so discard them.
	tmps, err := os.ReadDir(filepath.Join(p.cfg.Path, tmpDir))
	if err != nil {
		return fmt.Errorf("pool %s: %w", p.cfg.Name, err)
	}
	for _, e := range tmps {
		// In a shared pool, another host may be building this entry right now: its
		// builder holds the entry's lock.
		l, err := p.tryLock(buildLock(e.Name()))
		if errors.Is(err, ErrBusy) {
			continue
		}
		if err != nil {
			return err
		}
		if strings.HasPrefix(e.Name(), "g") {
			// A group snapshot that never committed; it may have left pods paused.
			p.resumeLeftovers(ctx, filepath.Join(p.cfg.Path, tmpDir, e.Name()))
		}
		logger.Info("Rolling back half-created volume", "entry", e.Name())
		err = p.toTrash(filepath.Join(p.cfg.Path, tmpDir), e.Name())
		l.unlock()
		if err != nil {
			return err
		}
	}
	if len(tmps) > 0 {
		if err := meta.SyncDir(filepath.Join(p.cfg.Path, tmpDir)); err != nil {
			return err
		}
	}
	p.mu.Lock()
	loaded := p.loaded
	p.mu.Unlock()
	if loaded {
		// Served again: other hosts created and deleted meanwhile.
		err = p.rescan(ctx)
	} else if err = p.loadIndex(ctx); err == nil {
		err = p.loadSnapshots(ctx)
	}
	if err != nil {
		return err
	}
	p.thawLeftovers(ctx)
	p.reflink.Store(clone.ReflinkSupported(filepath.Join(p.cfg.Path, tmpDir)))
	logger.V(2).Info("Pool copy mode", "reflink", p.reflink.Load())
	// Deleted volumes still in the trash keep their quota project IDs until purged.
	trashed, err := os.ReadDir(filepath.Join(p.cfg.Path, trashDir))
	if err != nil {
		return fmt.Errorf("pool %s: %w", p.cfg.Name, err)
	}
	for _, e := range trashed {
		if r, err := readRecord(filepath.Join(p.cfg.Path, trashDir, e.Name())); err == nil {
			p.projects.mark(r.ProjectID)
		}
	}
	p.mu.Lock()
	p.loaded = true
	p.healthErr = checked
	p.healthReason = reasonFor(checked, ReasonCheckFailed)
	p.mu.Unlock()
	p.kickPurge()
	return nil
}

func (p *Pool) loadIndex(ctx context.Context) error {
	index, damaged, err := p.scanVolumes(ctx)
	if err != nil {
		return err
	}
	p.logDamage(ctx, "Volume", damaged, nil)
	for _, d := range damaged {
		p.keepProjects(ctx, d)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.damaged = damaged
	for name, r := range index {
		p.index[name] = r
		p.allocated += r.CapacityBytes
		p.projects.mark(r.ProjectID)
	}
	klog.FromContext(ctx).V(2).Info("Pool loaded", "pool", p.cfg.Name, "volumes", len(p.index), "allocatedBytes", p.allocated)
	return nil
}

// scanVolumes reads every committed volume's record, and returns the directories
// without a readable, matching one apart (damaged.go).
func (p *Pool) scanVolumes(ctx context.Context) (map[string]*Record, map[string]damage, error) {
	logger := klog.FromContext(ctx).WithValues("pool", p.cfg.Name)
	dir := filepath.Join(p.cfg.Path, volumesDir)
	f, err := os.Open(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("pool %s: %w", p.cfg.Name, err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, nil, fmt.Errorf("pool %s: read %s: %w", p.cfg.Name, dir, err)
	}
	index := make(map[string]*Record, len(names))
	damaged := map[string]damage{}
	for _, name := range names {
		if len(name) != hashLen || !isLowerHex(name) {
			logger.V(4).Info("Ignoring foreign entry in volumes directory", "entry", name)
			continue
		}
		if !p.Shared() {
			// In a shared pool such a temp may be another host's update in progress.
			removeStaleTemps(filepath.Join(dir, name))
			removeResyncLeftovers(ctx, filepath.Join(dir, name))
		}
		r, err := p.readVolume(name)
		var d *damage
		switch {
		case err == nil:
			index[name] = r
		case errors.As(err, &d):
			// Cannot happen through Berth (a volume is committed with its record):
			// keep the data untouched, and everything it holds taken.
			damaged[name] = *d
		case errors.Is(err, os.ErrNotExist):
			// Deleted (by another host) since it was listed.
		default:
			// A shared filesystem that does not answer: known again at the next scan.
			logger.V(4).Info("Cannot read volume record", "entry", name, "err", err.Error())
		}
	}
	return index, damaged, nil
}

// checkRecord makes sure a record read from volumes/<hash> belongs there: its ID, by
// which every later call finds the volume, names this pool and this hash.
func (p *Pool) checkRecord(r *Record, hash string) error {
	id, err := ParseVolumeID(r.ID)
	if err != nil || id.Pool != p.cfg.Name || id.Hash != hash || r.Pool != p.cfg.Name {
		return fmt.Errorf("record of %q in pool %s does not match directory %s", truncate(r.ID), p.cfg.Name, hash)
	}
	return nil
}

// removeStaleTemps deletes temp files left by an interrupted atomic update of a
// volume's record or staging record (meta.WriteFile names them .<name>.tmp*).
func removeStaleTemps(volDir string) {
	matches, _ := filepath.Glob(filepath.Join(volDir, ".*.json.tmp*"))
	for _, m := range matches {
		_ = os.Remove(m)
	}
}

// toTrash renames parent/name into the pool's trash under a unique name.
func (p *Pool) toTrash(parent, name string) error {
	dst := filepath.Join(p.cfg.Path, trashDir, strings.SplitN(name, ".", 2)[0]+"."+randHex())
	if err := os.Rename(filepath.Join(parent, name), dst); err != nil {
		return fmt.Errorf("pool %s: move %s to trash: %w", p.cfg.Name, name, err)
	}
	return nil
}

// Capacity reports the bytes a new volume may take now (available) and the largest
// volume the pool could ever hold (maxVolume), both net of the reserve. A shared pool
// whose mount is gone is ErrNotReady (usable).
func (p *Pool) Capacity() (available, maxVolume int64, err error) {
	if err := p.usable(p.ctx()); err != nil {
		return 0, 0, err
	}
	return p.capacity()
}

// capacity is Capacity once the pool is known usable.
func (p *Pool) capacity() (available, maxVolume int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(p.cfg.Path, &st); err != nil {
		return 0, 0, fmt.Errorf("pool %s: statfs: %w", p.cfg.Name, err)
	}
	total := int64(st.Blocks) * st.Bsize
	free := int64(st.Bavail)*st.Bsize - p.cfg.ReservedBytes
	maxVolume = max(total-p.cfg.ReservedBytes, 0)
	available = free
	if !p.cfg.Overcommit {
		if p.Shared() {
			// Other hosts create and delete volumes too: count what is on disk.
			if err := p.rescan(context.Background()); err != nil {
				return 0, 0, err
			}
		}
		p.mu.Lock()
		available = min(available, maxVolume-p.allocated)
		p.mu.Unlock()
	}
	return max(available, 0), maxVolume, nil
}

func randHex() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
