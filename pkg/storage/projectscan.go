package storage

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/berth-csi/berth/pkg/storage/quota"
	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// A quota volume's limit holds only while everything beneath its data directory is
// charged to its project ID. A pod in the host user namespace may change the ID of
// what it owns (FS_IOC_FSSETXATTR, `chattr -p`), to escape its limit or to fill a
// neighbour's; in a user namespace (`hostUsers: false`) the kernel refuses it. The
// project scan finds such entries and charges them back, a bounded number of
// entries at a time (docs/operations.md, "Quota pools and project IDs").
const (
	// DefaultProjectScanEvery is the pause between two scans of a quota pool.
	DefaultProjectScanEvery = time.Minute
	// DefaultProjectScanBudget is how many entries a scan reads between two pauses.
	DefaultProjectScanBudget = 1000
	// DefaultProjectScanPause is the pause after each budget of entries.
	DefaultProjectScanPause = 250 * time.Millisecond
)

// ProjectScan bounds the project scan: Every between two scans of a pool, Budget
// entries between two pauses of Pause. Zero fields take the defaults.
type ProjectScan struct {
	Every  time.Duration
	Budget int
	Pause  time.Duration
}

func (s ProjectScan) withDefaults() ProjectScan {
	if s.Every <= 0 {
		s.Every = DefaultProjectScanEvery
	}
	if s.Budget <= 0 {
		s.Budget = DefaultProjectScanBudget
	}
	if s.Pause <= 0 {
		s.Pause = DefaultProjectScanPause
	}
	return s
}

// SetProjectScan bounds the background project scan; call it before Start.
func (e *Engine) SetProjectScan(s ProjectScan) { e.scan = s }

// projectFindings is what the scans found in one volume since the driver started.
type projectFindings struct {
	reset  int64     // entries charged to another project (or directories without the inherit flag), reset
	failed int64     // such entries that could not be reset
	last   time.Time // when the last one was found
	err    string    // the last reset that failed
}

// projectChecker is a kind whose volumes are charged to a project ID of their own.
type projectChecker interface {
	checkProjects(ctx context.Context, p *Pool, r *Record, pace *pacer) (projectFindings, error)
}

// pacer spreads one pass of the scan over time: a pause after every Budget entries,
// counted across the pass's volumes (a pool of many small volumes pauses too).
type pacer struct {
	s ProjectScan
	n int
}

// step counts one entry; after each budget it pauses, and reports whether it did
// (paused) or ctx ended meanwhile (err).
func (pc *pacer) step(ctx context.Context) (paused bool, err error) {
	if pc.n++; pc.n <= pc.s.Budget {
		return false, nil
	}
	pc.n = 0
	t := time.NewTimer(pc.s.Pause)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return true, ctx.Err()
	case <-t.C:
		return true, nil
	}
}

// projectScanner scans the pool's volumes every s.Every until ctx ends.
func (p *Pool) projectScanner(ctx context.Context, s ProjectScan) {
	t := time.NewTimer(s.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if p.Health() == nil {
			p.ScanProjects(ctx, s)
		}
		t.Reset(s.Every)
	}
}

// ScanProjects checks every volume of a quota pool once, in hash order, and resets
// the project ID of each entry charged to another project than its volume's. It
// returns how many entries it reset in this pass (0 for other kinds).
func (p *Pool) ScanProjects(ctx context.Context, s ProjectScan) int64 {
	c, ok := p.backend.(projectChecker)
	if !ok {
		return 0
	}
	s = s.withDefaults()
	logger := klog.FromContext(ctx).WithValues("pool", p.cfg.Name)
	p.mu.Lock()
	recs := make([]*Record, 0, len(p.index))
	for _, r := range p.index {
		recs = append(recs, r)
	}
	for hash := range p.findings {
		if _, ok := p.index[hash]; !ok {
			delete(p.findings, hash) // deleted: a new volume of the same name starts clean
		}
	}
	p.mu.Unlock()
	sort.Slice(recs, func(i, j int) bool { return recs[i].Hash() < recs[j].Hash() })
	var total int64
	pace := &pacer{s: s}
	for _, r := range recs {
		if ctx.Err() != nil {
			break
		}
		f, err := c.checkProjects(ctx, p, r, pace)
		if err != nil {
			logger.V(4).Info("Project scan of volume stopped", "volumeID", r.ID, "err", err.Error())
		}
		if f.reset == 0 && f.failed == 0 {
			continue
		}
		total += f.reset
		p.projectResets.Add(f.reset)
		p.mu.Lock()
		old := p.findings[r.Hash()]
		old.reset += f.reset
		old.failed += f.failed
		old.last = f.last
		if f.err != "" {
			old.err = f.err
		}
		p.findings[r.Hash()] = old
		p.mu.Unlock()
		logger.Info("Entries of a quota volume were charged to another project; reset", "volumeID", r.ID,
			"projectID", r.ProjectID, "reset", f.reset, "failed", f.failed)
	}
	return total
}

// ProjectResets counts the entries whose project ID the scans have reset in this
// pool since the driver started (for metrics).
func (p *Pool) ProjectResets() int64 { return p.projectResets.Load() }

// projectProblem reports what the scans found in the volume, if anything.
func (p *Pool) projectProblem(hash string) []Problem {
	p.mu.Lock()
	f, ok := p.findings[hash]
	p.mu.Unlock()
	if !ok {
		return nil
	}
	msg := fmt.Sprintf("%d entries had a project ID other than the volume's and were reset (the last found at %s): "+
		"something in a pod changed them to write past the volume's size or into another volume's quota",
		f.reset, f.last.UTC().Format(time.RFC3339))
	if f.failed > 0 {
		msg += fmt.Sprintf("; %d could not be reset (%s)", f.failed, f.err)
	}
	return []Problem{{Degraded, "ProjectIDChanged", msg}}
}

// checkProjects walks the volume's data directory, confined (never following a
// link, never crossing a mount), and charges back to r.ProjectID every directory
// and regular file charged elsewhere, and gives every directory the inherit flag.
// Other entries (symlinks, device nodes, FIFOs, sockets) cannot be opened safely
// for the ioctls and are skipped. After each budget of entries it pauses (pace) and
// stops if the volume is gone.
func (quotaBackend) checkProjects(ctx context.Context, p *Pool, r *Record, pace *pacer) (projectFindings, error) {
	var f projectFindings
	if r.ProjectID == 0 {
		return f, nil
	}
	data := p.DataPath(r.Hash())
	anchor, err := unix.Open(data, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return f, fmt.Errorf("open %s: %w", data, err)
	}
	defer unix.Close(anchor)
	w := safefs.NewWalker(anchor, data)
	defer w.Close()
	if err := w.Push("."); err != nil {
		return f, fmt.Errorf("open %s: %w", data, err)
	}
	check := func(fd int, dir bool, path string) {
		id, inherit, err := quota.FileProject(fd)
		if err == nil && id == r.ProjectID && (inherit || !dir) {
			return
		}
		if err == nil {
			err = quota.SetFileProject(fd, r.ProjectID, dir)
		}
		f.last = time.Now()
		if err != nil {
			f.failed++
			f.err = fmt.Sprintf("%s: %v", path, err)
			return
		}
		f.reset++
	}
	fd, err := w.Fd()
	if err != nil {
		return f, err
	}
	check(fd, true, data)
	for w.Depth() > 0 {
		paused, err := pace.step(ctx)
		if err != nil {
			return f, err
		}
		if paused {
			if cur, ok := p.lookup(r.Hash()); !ok || cur.ProjectID != r.ProjectID {
				return f, nil // deleted meanwhile
			}
		}
		name, _, ok, err := w.Next()
		if err != nil {
			return f, err
		}
		if !ok {
			w.Pop()
			continue
		}
		dfd, err := w.Fd()
		if err != nil {
			return f, err
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue // vanished
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if err := w.Push(name); err != nil {
				continue // vanished, replaced, or a mount point: not part of this tree
			}
			fd, err := w.Fd()
			if err != nil {
				return f, err
			}
			check(fd, true, w.Path())
		case unix.S_IFREG:
			fd, err := safefs.OpenRegular(dfd, name)
			if err != nil {
				continue
			}
			check(fd, false, w.Path(name))
			unix.Close(fd)
		}
	}
	return f, nil
}
