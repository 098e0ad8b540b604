package storage

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"k8s.io/klog/v2"
)

// Volume context keys of CSI ephemeral inline volumes.
const (
	ctxEphemeral = "csi.storage.k8s.io/ephemeral"
	// AttrSize and AttrPool are the attributes an inline volume may set.
	AttrSize = "size"
	AttrPool = "pool"
)

// publishedVolume finds the volume a publish names, creating it first when the
// request is for a CSI ephemeral inline volume.
func (n *Node) publishedVolume(ctx context.Context, req PublishRequest) (*Pool, *Record, error) {
	vctx := req.VolumeContext
	if vctx[ctxEphemeral] != "true" {
		return n.volume(req.VolumeID)
	}
	for k := range vctx {
		if k != AttrSize && k != AttrPool && !strings.HasPrefix(k, "csi.storage.k8s.io/") {
			return nil, nil, errorf(ErrInvalid, "unknown ephemeral volume attribute %q (known: size, pool)", truncate(k))
		}
	}
	p, err := n.e.inlinePool(vctx)
	if err != nil {
		return nil, nil, err
	}
	if err := p.nodeKind().CanServeInline(p); err != nil {
		return nil, nil, err
	}
	size, err := inlineSize(p, vctx)
	if err != nil {
		return nil, nil, err
	}
	r, err := p.Create(ctx, CreateRequest{
		Name: EphemeralName(req.VolumeID), RequiredBytes: size, AccessType: req.Capability.Access, Ephemeral: true,
	})
	if err != nil {
		return nil, nil, err
	}
	return p, r, nil
}

// inlinePool is the pool an inline volume goes to: the one its `pool` attribute
// names, which the admin must have marked for inline volumes, else the first pool
// so marked. A pod's attributes bypass StorageClasses and ResourceQuota: the
// configuration alone says which pools they may fill.
func (e *Engine) inlinePool(vctx map[string]string) (*Pool, error) {
	name, ok := vctx[AttrPool]
	if !ok {
		for _, p := range e.pools {
			if p.cfg.Ephemeral.Allowed {
				return p, nil
			}
		}
		return nil, errorf(ErrPrecondition, "no pool on this node allows inline ephemeral volumes (pools[].ephemeral.allowed)")
	}
	p, err := e.Pool(name)
	if err != nil {
		return nil, errorf(ErrInvalid, "%w", err)
	}
	if !p.cfg.Ephemeral.Allowed {
		return nil, errorf(ErrInvalid, "pool %q does not allow inline ephemeral volumes (pools[].ephemeral.allowed)", p.Name())
	}
	return p, nil
}

// inlineSize is the size of an inline volume: its `size` attribute, at most the
// pool's ephemeral.maxSize, or without one the smaller of that maximum and
// DefaultCapacityBytes.
func inlineSize(p *Pool, vctx map[string]string) (int64, error) {
	limit := p.cfg.Ephemeral.maxBytes()
	v, ok := vctx[AttrSize]
	if !ok {
		return min(limit, DefaultCapacityBytes), nil
	}
	size, err := ParseQuantity(v)
	if err != nil {
		return 0, errorf(ErrInvalid, "ephemeral attribute size: %w", err)
	}
	if size == 0 {
		return min(limit, DefaultCapacityBytes), nil
	}
	if size > limit {
		return 0, errorf(ErrOutOfRange, "ephemeral attribute size %s is over pool %q's maximum of %d bytes for inline volumes (pools[].ephemeral.maxSize)",
			truncate(v), p.Name(), limit)
	}
	return size, nil
}

// deleteEphemeral deletes the ephemeral volume created for kubelet's volume ID, once
// it is published nowhere.
func (n *Node) deleteEphemeral(ctx context.Context, volumeID string) error {
	if len(n.e.Publications(volumeID)) > 0 {
		return nil
	}
	p, r, ok := n.e.Ephemeral(volumeID)
	if !ok {
		return nil
	}
	if err := p.Delete(ctx, r.Hash()); err != nil {
		return fmt.Errorf("delete ephemeral volume %s: %w", volumeID, err)
	}
	klog.FromContext(ctx).V(2).Info("Ephemeral volume deleted", "volumeID", volumeID, "pool", p.Name())
	return nil
}

// dropEphemeral deletes the ephemeral volume of a refused publish, unless it is
// published elsewhere; a failure is logged, the publish's own error is what counts.
func (n *Node) dropEphemeral(ctx context.Context, volumeID string) {
	if err := n.deleteEphemeral(ctx, volumeID); err != nil {
		klog.FromContext(ctx).Error(err, "Cannot delete ephemeral volume of a refused publish", "volumeID", volumeID)
	}
}

// ParseQuantity reads a Kubernetes-style quantity of bytes: a plain integer or one
// with a binary (Ki Mi Gi Ti Pi Ei) or decimal (k M G T P E) suffix.
func ParseQuantity(s string) (int64, error) {
	suffixes := []struct {
		s string
		m int64
	}{
		{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}, {"Pi", 1 << 50}, {"Ei", 1 << 60},
		{"k", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}, {"P", 1e15}, {"E", 1e18},
	}
	num, mult := s, int64(1)
	for _, x := range suffixes {
		if v, ok := strings.CutSuffix(s, x.s); ok {
			num, mult = v, x.m
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a non-negative quantity of bytes", truncate(s))
	}
	if n > (1<<63-1)/mult {
		return 0, fmt.Errorf("%q is too large", truncate(s))
	}
	return n * mult, nil
}
