package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/berth-csi/berth/pkg/storage/meta"
	"github.com/berth-csi/berth/pkg/storage/quota"
	"k8s.io/klog/v2"
)

// KindAuto is a pool that enforces sizes where the host can: at its first start it
// becomes a quota pool when the filesystem under its path enforces project quotas,
// and a dir pool (sizes accounted, not enforced) otherwise. The choice is written
// in the pool (kindFile) and kept from then on, so volumes made under one kind are
// never served by the other: a quota pool whose filesystem later lost prjquota is
// refused, as any quota pool is, rather than served as a dir pool.
const KindAuto = "auto"

// kindFile records the kind an auto pool chose, in the pool's root.
const kindFile = "kind.json"

// The kind the embedded default pool's first start chose: the placeholder until
// then is dir's backend, which nothing uses before open resolves it.
func init() { backends[KindAuto] = func(PoolConfig, Host) Backend { return dirBackend{} } }

// ErrSizesNotEnforced is wrapped by an auto pool's SizesNotEnforced condition.
var ErrSizesNotEnforced = errors.New("volume sizes are accounted, not enforced")

type kindRecord struct {
	Kind string `json:"kind"`
	// Why a dir pool was chosen, as the probe said at the first start.
	Why string `json:"why,omitempty"`
}

// resolveAuto decides, once per process, which kind an auto pool is: the one its
// kindFile names, else (first start) the one its existing volumes were made with,
// else quota where quota.Check passes and dir where it does not; then records it.
func (p *Pool) resolveAuto(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithValues("pool", p.cfg.Name)
	if err := os.MkdirAll(p.cfg.Path, 0o700); err != nil {
		return fmt.Errorf("pool %s: %w", p.cfg.Name, err)
	}
	rec, how, err := p.chooseKind()
	if err != nil {
		return fmt.Errorf("pool %s (kind auto): %w", p.cfg.Name, err)
	}
	p.backend = backends[rec.Kind](p.cfg, p.host)
	p.kind = rec.Kind
	if rec.Kind == KindDir {
		p.mu.Lock()
		p.notEnforced = fmt.Errorf("pool %s (kind auto) is a dir pool (%s), because %s: %w; for enforced sizes, use a quota "+
			"pool on XFS mounted with prjquota (or ext4 made with -O quota,project and mounted with prjquota) or an image pool "+
			"(README, \"Sizes enforced by the default pool\")", p.cfg.Name, how, rec.Why, ErrSizesNotEnforced)
		p.mu.Unlock()
		logger.Info("Pool kind chosen: volume sizes are NOT enforced", "kind", rec.Kind, "how", how, "why", rec.Why)
		return nil
	}
	logger.Info("Pool kind chosen: volume sizes are enforced", "kind", rec.Kind, "how", how)
	return nil
}

// chooseKind reads or makes the auto pool's kind record; how says which.
func (p *Pool) chooseKind() (kindRecord, string, error) {
	var rec kindRecord
	data, err := os.ReadFile(filepath.Join(p.cfg.Path, kindFile))
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &rec); err != nil || (rec.Kind != KindDir && rec.Kind != KindQuota) {
			return rec, "", fmt.Errorf("%s names no kind Berth knows (%q): an operator writes {\"kind\":\"dir\"} or "+
				"{\"kind\":\"quota\"}, as the pool's volumes were made: %w", filepath.Join(p.cfg.Path, kindFile), truncate(string(data)), ErrInvalid)
		}
		if rec.Why == "" {
			rec.Why = kindFile + " says so"
		}
		return rec, "recorded at the pool's first start in " + kindFile, nil
	case !errors.Is(err, os.ErrNotExist):
		return rec, "", err
	}
	how := "probed at the pool's first start"
	if kind, ok := p.existingKind(); ok {
		rec = kindRecord{Kind: kind}
		how = "the kind of the volumes the pool already holds"
		if kind == KindDir {
			rec.Why = "its volumes were made without project IDs, before kind auto"
		}
	} else if cerr := quota.Check(p.cfg.Path); cerr != nil {
		rec = kindRecord{Kind: KindDir, Why: cerr.Error()}
	} else {
		rec = kindRecord{Kind: KindQuota}
	}
	data, _ = json.Marshal(rec)
	if err := meta.WriteFile(p.cfg.Path, kindFile, append(data, '\n')); err != nil {
		return rec, "", err
	}
	return rec, how, nil
}

// existingKind is the kind of the volumes a pool holds that has no kind record
// (made by a version without auto, as a dir pool, or configured quota before):
// quota when a record names a project ID. ok is false for an empty pool.
func (p *Pool) existingKind() (kind string, ok bool) {
	entries, err := os.ReadDir(filepath.Join(p.cfg.Path, volumesDir))
	if err != nil || len(entries) == 0 {
		return "", false
	}
	for _, e := range entries {
		if r, err := readRecord(filepath.Join(p.cfg.Path, volumesDir, e.Name())); err == nil && r.ProjectID != 0 {
			return KindQuota, true
		}
	}
	return KindDir, true
}

// SizesNotEnforced is nil unless the pool is an auto pool that became a dir pool:
// then it says why, and how to get enforced sizes.
func (p *Pool) SizesNotEnforced() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.notEnforced
}

// PoolProblems are the conditions of the pool itself that do not stop it serving:
// SizesNotEnforced.
func (p *Pool) PoolProblems() []Problem {
	if err := p.SizesNotEnforced(); err != nil {
		return []Problem{{Degraded, "SizesNotEnforced", err.Error()}}
	}
	return nil
}

// Notices lists, one line per pool, what a served pool does not do that its
// operator may expect (for /readyz and the start-up log).
func (e *Engine) Notices() []string {
	var out []string
	for _, p := range e.pools {
		for _, pr := range p.PoolProblems() {
			out = append(out, pr.Reason+": "+pr.Message)
		}
	}
	return out
}
