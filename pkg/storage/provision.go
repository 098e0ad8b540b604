package storage

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"k8s.io/klog/v2"
)

// ParamPool is the StorageClass parameter that names a pool; every kind understands it.
const ParamPool = "pool"

// ProvisionRequest is a CreateVolume in the engine's terms.
type ProvisionRequest struct {
	Name          string
	RequiredBytes int64
	LimitBytes    int64 // 0: no limit
	// Capabilities are the ways the volume will be used; they share one access type,
	// the one the volume is created for.
	Capabilities []Capability
	// Parameters are the StorageClass parameters, all of them the pool's kind's;
	// they are recorded with the volume, with the pool's name.
	Parameters map[string]string
	// MutableParameters are CreateVolume's mutable_parameters, all of them mutable
	// parameters of the pool's kind; they take precedence over Parameters.
	MutableParameters map[string]string
	Source            *Source
	// Node is the node this engine serves; Requisite lists topologies (their
	// segments), at least one of which must reach the volume (none: no constraint).
	Node      string
	Requisite []map[string]string
	// Claim is the claim the sidecar named (nil: none); recorded, never compared.
	Claim *Claim
}

// PoolFor returns the pool that StorageClass parameters name (the default pool when
// they name none), once its kind is known to understand every parameter. An unknown
// pool or parameter is ErrInvalid: the request can never succeed here.
func (e *Engine) PoolFor(params map[string]string) (*Pool, error) {
	p := e.DefaultPool()
	if name, ok := params[ParamPool]; ok {
		var err error
		if p, err = e.Pool(name); err != nil {
			return nil, errorf(ErrInvalid, "%v", err)
		}
	}
	if err := p.CheckParams(params); err != nil {
		return nil, err
	}
	return p, nil
}

// CheckParams refuses a StorageClass parameter the pool's kind does not understand.
func (p *Pool) CheckParams(params map[string]string) error {
	known := append([]string{ParamPool}, p.backend.Params()...)
	for _, k := range slices.Sorted(maps.Keys(params)) {
		if !slices.Contains(known, k) {
			return fmt.Errorf("unknown parameter %q for pool %s of kind %s (known: %s): %w",
				truncate(k), p.cfg.Name, p.kind, strings.Join(known, ", "), ErrInvalid)
		}
	}
	return nil
}

// Provision creates a volume in pool p for a CreateVolume, or returns the volume an
// identical earlier request created. Beyond what Create checks:
//   - every parameter and capability must be one the pool's kind serves;
//   - a filesystem volume of a kind that formats its own is formatted with the
//     filesystem asked for (parameter and capabilities must agree), else its
//     source's, else the kind's default;
//   - one of the required topologies must reach the volume (ErrUnreachable);
//   - the name is the idempotency key across pools: the same name asked of another
//     pool is a request with other parameters (ErrExists).
//
// The caller holds the locks of the volume's ID, of its name and of its source.
func (e *Engine) Provision(ctx context.Context, p *Pool, req ProvisionRequest) (*Record, error) {
	if err := p.CheckParams(req.Parameters); err != nil {
		return nil, err
	}
	if err := p.CheckMutable(req.MutableParameters); err != nil {
		return nil, err
	}
	access, err := p.CheckCapabilities(req.Capabilities)
	if err != nil {
		return nil, err
	}
	fsType, err := p.fsTypeFor(access, &req)
	if err != nil {
		return nil, err
	}
	if len(req.Requisite) > 0 && !slices.ContainsFunc(req.Requisite, func(t map[string]string) bool {
		return p.AccessibleFrom(req.Node, t)
	}) {
		return nil, errorf(ErrUnreachable, "accessibility_requirements cannot be met: volumes of pool %s are accessible only from %s=%s",
			p.cfg.Name, TopologyKey, req.Node)
	}
	for _, q := range e.pools {
		if q == p {
			continue
		}
		id := VolumeID(q.cfg.Name, req.Name)
		if _, err := q.find(id[len(id)-hashLen:]); err == nil {
			return nil, errorf(ErrExists, "volume %q already exists in pool %s", req.Name, q.cfg.Name)
		}
	}
	params := maps.Clone(req.Parameters)
	if params == nil {
		params = map[string]string{}
	}
	// Recorded explicitly, so "no pool" and "the default pool by name" are one request.
	params[ParamPool] = p.cfg.Name
	r, err := p.Create(ctx, CreateRequest{
		Name:          req.Name,
		RequiredBytes: req.RequiredBytes,
		LimitBytes:    req.LimitBytes,
		AccessType:    access,
		FSType:        fsType,
		Parameters:    params,
		Source:        req.Source,
		// Recorded only when given: a record without them reads as before.
		MutableParameters: maps.Clone(req.MutableParameters),
		Claim:             req.Claim,
	})
	if err != nil {
		return nil, p.sourceElsewhere(req, err)
	}
	klog.FromContext(ctx).V(4).Info("Volume provisioned", "volumeID", r.ID, "fsType", r.FSType)
	return r, nil
}

// sourceElsewhere turns a create's ErrNotFound for its content source into
// ErrUnreachable when the request came with topology requirements and the pool is
// node-local: each node's pool of that name holds only the snapshots and volumes made
// on that node, so another node may hold the source. The CO may then try another node
// (external-provisioner reschedules the claim's pod on ResourceExhausted); without
// topology requirements, or in a shared pool, the source does not exist and err stays
// what it was. A source whose ID is not Berth's stays ErrNotFound.
func (p *Pool) sourceElsewhere(req ProvisionRequest, err error) error {
	var located nowhere
	if !errors.Is(err, ErrNotFound) || req.Source == nil || len(req.Requisite) == 0 || p.Shared() || errors.As(err, &located) {
		return err
	}
	if !p.ownsSourceID(req.Source) {
		return err
	}
	if _, serr := p.sourceOf(req.Source); !errors.Is(serr, ErrNotFound) {
		return err
	}
	return errorf(ErrUnreachable, "%s %s is not in pool %s on node %s: a node-local pool keeps its "+
		"snapshots and volumes on the node that made them, so another node may hold it "+
		"(pulling it from there needs the transfer channel and the pv-lister): schedule the claim's pod on that node",
		req.Source.Kind, req.Source.ID, p.cfg.Name, req.Node)
}

// fsTypeFor picks the filesystem a new volume is formatted with. A kind whose
// volumes live on the pool's own filesystem records none, and so does a block volume.
func (p *Pool) fsTypeFor(access string, req *ProvisionRequest) (string, error) {
	fss := p.backend.Filesystems()
	if len(fss) == 0 || access != AccessMount {
		return "", nil
	}
	fsType := req.Parameters[ParamFSType]
	for _, c := range req.Capabilities {
		switch {
		case c.FSType == "":
		case fsType == "":
			fsType = c.FSType
		case c.FSType != fsType:
			return "", errorf(ErrInvalid, "fs_type %q conflicts with fsType %q", c.FSType, fsType)
		}
	}
	if fsType == "" && req.Source != nil {
		// A copy holds its source's filesystem: that is the volume's, not the
		// default. A source that cannot be copied here, Create reports; one
		// another node may hold leaves it open, to be the pulled image's
		// (remote.go).
		src, err := p.sourceOf(req.Source)
		switch {
		case err == nil:
			fsType = src.fsType
		case errors.Is(err, ErrNotFound) && p.remote != nil && !p.Shared():
			return "", nil
		}
	}
	if fsType == "" {
		fsType = fss[0]
	}
	if !slices.Contains(fss, fsType) {
		return "", errorf(ErrInvalid, "fsType %q is not supported (use one of %v)", fsType, fss)
	}
	return fsType, nil
}

// DeleteVolume deletes a volume by ID. An ID that names no volume here is success,
// as deleting a missing volume is, except one that names a pool this engine lacks:
// the engine serving that pool may hold the volume, so the answer is ErrPrecondition
// and the CO retries until that one deletes it. An adopted volume's data is never
// touched; a volume still published on this node is ErrInUse. The caller holds the
// ID's lock.
func (e *Engine) DeleteVolume(ctx context.Context, id string) error {
	if IsAdopted(id) {
		klog.FromContext(ctx).V(4).Info("Adopted volume released, its data left untouched", "volumeID", id)
		return nil
	}
	p, hash, err := e.Resolve(id)
	if err != nil {
		return unresolvedDelete("volume", id, err)
	}
	pubID := id
	r, err := p.Get(hash)
	switch {
	case err == nil:
		pubID = r.PublicationID()
	case !errors.Is(err, ErrNotFound):
		// A shared pool whose mount is gone (ErrNotReady): the data may well be
		// there, so never success.
		return fmt.Errorf("delete volume %s: %w", id, err)
	}
	if pubs := e.Publications(pubID); len(pubs) > 0 {
		return errorf(ErrInUse, "volume %s is still published at %s", id, pubs[0].TargetPath)
	}
	return p.Delete(ctx, hash)
}

// DeleteSnapshot deletes a snapshot by ID, with DeleteVolume's rules for IDs that
// name no snapshot here. The caller holds the ID's lock.
func (e *Engine) DeleteSnapshot(ctx context.Context, id string) error {
	p, hash, err := e.ResolveSnapshot(id)
	if err != nil {
		return unresolvedDelete("snapshot", id, err)
	}
	// A snapshot taken in a group snapshot goes with its group (the spec's
	// INVALID_ARGUMENT "Snapshot is part of a group"), unless the group is gone.
	if s, err := p.Snapshot(hash); err == nil && s.Group != "" && e.groupAlive(s.Group) {
		return errorf(ErrInvalid, "snapshot %s is part of group snapshot %s and cannot be deleted alone: delete the group (DeleteVolumeGroupSnapshot)", id, s.Group)
	}
	return p.DeleteSnapshot(ctx, hash)
}

// unresolvedDelete answers a deletion whose ID did not resolve (err): a hostile ID
// is refused, one of a pool this engine does not have is notServed, and a harmless
// ID that is not Berth's is success (no such object exists).
func unresolvedDelete(kind, id string, err error) error {
	switch {
	case errors.Is(err, ErrPoolNotConfigured):
		return notServed(kind, id, err)
	case errors.Is(err, ErrInvalid):
		return err
	}
	return nil
}

// notServed is the answer to a deletion whose ID names a pool this engine does not
// have. Success would let the CO forget an object that may well exist on the host
// serving the pool (a central controller is asked about node-local volumes too).
func notServed(kind, id string, err error) error {
	return errorf(ErrPrecondition, "%s %s cannot be deleted here: %v; the driver that serves the pool deletes it", kind, id, err)
}
