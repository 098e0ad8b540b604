package storage

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/berth-csi/berth/pkg/storage/meta"
	"k8s.io/klog/v2"
)

// Mutable parameters are those a volume may change after creation (CSI's
// mutable_parameters, Kubernetes' VolumeAttributesClass): given at CreateVolume, they
// take precedence over the StorageClass parameters of the same name; ModifyVolume
// changes them. They are recorded apart from the creation parameters
// (Record.MutableParameters), which stay the volume's identity for a repeated
// CreateVolume.

// mutableParams are the mutable parameters some kind of Berth understands; each
// kind that has any lists its own (mutableBackend.MutableParams).
var mutableParams = append([]string{ParamInodeLimit}, ioParams...)

// mutableBackend is a kind whose volumes have mutable parameters.
type mutableBackend interface {
	// MutableParams lists the parameters a volume of the kind may change.
	MutableParams() []string
	// CheckMutable refuses a value the kind cannot take for key (ErrInvalid), or a
	// key this pool of the kind cannot honour after all (ErrUnsupported).
	CheckMutable(p *Pool, key, value string) error
	// Modify applies the volume's parameters as r records them (mutable ones
	// first). It must be idempotent: a retry after a crash finds it done.
	Modify(ctx context.Context, p *Pool, r *Record, volDir string) error
}

// param is the value of a parameter of the volume: the mutable one when it was given
// (at creation or by a modification), else the StorageClass's.
func (r *Record) param(key string) (string, bool) {
	if v, ok := r.MutableParameters[key]; ok {
		return v, true
	}
	v, ok := r.Parameters[key]
	return v, ok
}

// MutableParams lists the mutable parameters the pool's kind honours (none: the pool
// cannot serve ModifyVolume).
// The I/O limits are left out on a pool whose storage lies on no block device.
func (p *Pool) MutableParams() []string {
	m, ok := p.backend.(mutableBackend)
	if !ok {
		return nil
	}
	own := m.MutableParams()
	if p.noIODevice() != nil {
		own = slices.DeleteFunc(slices.Clone(own), func(k string) bool { return slices.Contains(ioParams, k) })
	}
	return own
}

// Modifiable reports whether any pool of the engine has mutable parameters: only then
// is ModifyVolume served.
func (e *Engine) Modifiable() bool {
	return slices.ContainsFunc(e.pools, func(p *Pool) bool { return len(p.MutableParams()) > 0 })
}

// checkKnownMutable refuses keys that no kind of Berth can change, naming them all.
func checkKnownMutable(params map[string]string) error {
	var unknown []string
	for _, k := range slices.Sorted(maps.Keys(params)) {
		if !slices.Contains(mutableParams, k) {
			unknown = append(unknown, fmt.Sprintf("%q", truncate(k)))
		}
	}
	if len(unknown) > 0 {
		return errorf(ErrInvalid, "unknown mutable parameter %s (Berth's: %s)", strings.Join(unknown, ", "), strings.Join(mutableParams, ", "))
	}
	return nil
}

// CheckMutable validates mutable parameters for a volume of this pool, every key and
// value before anything is applied: a key no kind knows is ErrInvalid, a key this
// pool's kind cannot honour is ErrUnsupported (naming the kind), a bad value ErrInvalid.
func (p *Pool) CheckMutable(params map[string]string) error {
	if err := checkKnownMutable(params); err != nil {
		return err
	}
	own := p.MutableParams()
	var unsupported []string
	for _, k := range slices.Sorted(maps.Keys(params)) {
		if !slices.Contains(own, k) {
			unsupported = append(unsupported, fmt.Sprintf("%q", k))
		}
	}
	if len(unsupported) > 0 {
		has := "none"
		if len(own) > 0 {
			has = strings.Join(own, ", ")
		}
		why := ""
		if err := p.noIODevice(); err != nil && slices.ContainsFunc(slices.Collect(maps.Keys(params)), func(k string) bool { return slices.Contains(ioParams, k) }) {
			why = "; I/O limits need a block device: " + err.Error()
		}
		return errorf(ErrUnsupported, "mutable parameter %s cannot be honoured by pool %s of kind %s (its mutable parameters: %s%s)",
			strings.Join(unsupported, ", "), p.cfg.Name, p.kind, has, why)
	}
	m, _ := p.backend.(mutableBackend)
	for _, k := range slices.Sorted(maps.Keys(params)) {
		if err := m.CheckMutable(p, k, params[k]); err != nil {
			return err
		}
	}
	return nil
}

// ModifyVolume sets mutable parameters of a volume by ID. Keys absent from params are
// left as they are, as the spec asks. The caller holds the ID's lock.
func (e *Engine) ModifyVolume(ctx context.Context, id string, params map[string]string) (*Record, error) {
	if err := checkKnownMutable(params); err != nil {
		return nil, err
	}
	p, hash, err := e.Resolve(id)
	if err != nil {
		return nil, err
	}
	r, err := p.Modify(ctx, hash, params)
	if errors.Is(err, ErrNotFound) && !p.Shared() {
		// The same pool name on every node: the volume may be another node's.
		return nil, fmt.Errorf("%w (the volumes of node-local pool %s are modified by the driver of the node that holds them)", err, p.cfg.Name)
	}
	if err == nil && e.node != nil && namesIO(params) {
		// Recorded first: a failure here is retried by the CO, and every publish
		// writes the recorded limits anyway.
		if err := e.node.modifyIO(ctx, r.ID); err != nil {
			return nil, fmt.Errorf("modify volume %s: set the I/O limits of the pods that publish it: %w", r.ID, err)
		}
	}
	return r, err
}

// Modify validates params for the volume with hash, applies them and records them:
// the kind applies first, then record.json is replaced atomically, as an expansion
// does. A crash between the two leaves the old values recorded and the new ones
// applied; the CO retries until it succeeds, and the retry records them. When the
// record cannot be written the old values are applied again. Repeating a
// modification is success and applies it again (idempotent).
func (p *Pool) Modify(ctx context.Context, hash string, params map[string]string) (*Record, error) {
	// A pool that is not served could not apply the parameters (no quota enforced).
	if err := p.Health(); err != nil {
		return nil, p.notServed(err)
	}
	l, r, err := p.lockRecord(ctx, "modify", hash)
	if err != nil {
		return nil, err
	}
	defer l.unlock()
	if err := p.CheckMutable(params); err != nil {
		return nil, fmt.Errorf("modify volume %s: %w", r.ID, err)
	}
	if len(params) == 0 {
		return r, nil
	}
	modified := r.Clone()
	if modified.MutableParameters == nil {
		modified.MutableParameters = map[string]string{}
	}
	maps.Copy(modified.MutableParameters, params)
	m := p.backend.(mutableBackend) // CheckMutable found the keys to be the kind's
	volDir := p.VolumeDir(hash)
	if err := m.Modify(ctx, p, modified, volDir); err != nil {
		return nil, fmt.Errorf("modify volume %s: %w", r.ID, err)
	}
	if maps.Equal(modified.MutableParameters, r.MutableParameters) {
		return modified, nil
	}
	data, err := encodeRecord(modified)
	if err == nil {
		err = meta.WriteFile(volDir, recordFile, data)
	}
	if err != nil {
		if rerr := m.Modify(ctx, p, r, volDir); rerr != nil {
			klog.FromContext(ctx).Error(rerr, "Cannot restore the recorded parameters after a failed record", "volumeID", r.ID)
		}
		return nil, fmt.Errorf("record modification of %s: %w", r.ID, p.noSpace(stepRecord, err))
	}
	p.commit(hash, modified, 0)
	klog.FromContext(ctx).V(4).Info("Volume modified", "volumeID", r.ID, "mutableParameters", modified.MutableParameters)
	return modified.Clone(), nil
}
