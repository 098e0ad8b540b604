package node

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// Volume context keys of CSI ephemeral inline volumes.
const (
	ctxEphemeral = "csi.storage.k8s.io/ephemeral"
	attrSize     = "size"
	attrPool     = "pool"
)

// volumeFor finds the volume a publish names, creating it first when the request is
// for a CSI ephemeral inline volume.
func (s *Server) volumeFor(ctx context.Context, req *csi.NodePublishVolumeRequest) (*storage.Pool, *storage.Record, error) {
	vctx := req.GetVolumeContext()
	if vctx[ctxEphemeral] != "true" {
		return s.resolve(req.GetVolumeId())
	}
	for k := range vctx {
		if k != attrSize && k != attrPool && !strings.HasPrefix(k, "csi.storage.k8s.io/") {
			return nil, nil, status.Errorf(codes.InvalidArgument, "unknown ephemeral volume attribute %q (known: size, pool)", k)
		}
	}
	p := s.engine.DefaultPool()
	if name, ok := vctx[attrPool]; ok {
		var err error
		if p, err = s.engine.Pool(name); err != nil {
			return nil, nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	if p.Kind() == storage.KindShared {
		return nil, nil, status.Errorf(codes.InvalidArgument, "ephemeral volumes cannot use shared pool %s: they live on one node with one pod; use a dir or quota pool", p.Name())
	}
	if p.Kind() == storage.KindImage {
		return nil, nil, status.Errorf(codes.InvalidArgument, "ephemeral volumes cannot use image pool %s: kubelet does not stage them; use a dir or quota pool", p.Name())
	}
	var size int64
	if v, ok := vctx[attrSize]; ok {
		var err error
		if size, err = ParseQuantity(v); err != nil {
			return nil, nil, status.Errorf(codes.InvalidArgument, "ephemeral attribute size: %v", err)
		}
	}
	access := storage.AccessMount
	if req.GetVolumeCapability().GetBlock() != nil {
		access = storage.AccessBlock
	}
	r, err := p.Create(ctx, storage.CreateRequest{
		Name: storage.EphemeralName(req.GetVolumeId()), RequiredBytes: size, AccessType: access, Ephemeral: true,
	})
	if err != nil {
		return nil, nil, csierr.Status(err)
	}
	return p, r, nil
}

// deleteEphemeral deletes the ephemeral volume created for kubelet's volume ID, once
// it is published nowhere.
func (s *Server) deleteEphemeral(ctx context.Context, volumeID string) error {
	if len(s.engine.Publications(volumeID)) > 0 {
		return nil
	}
	p, r, ok := s.engine.Ephemeral(volumeID)
	if !ok {
		return nil
	}
	if err := p.Delete(ctx, r.Hash()); err != nil {
		return csierr.Status(fmt.Errorf("delete ephemeral volume %s: %w", volumeID, err))
	}
	klog.FromContext(ctx).V(2).Info("Ephemeral volume deleted", "volumeID", volumeID, "pool", p.Name())
	return nil
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
		return 0, fmt.Errorf("%q is not a non-negative quantity of bytes", s)
	}
	if n > (1<<63-1)/mult {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n * mult, nil
}

// resolve finds a volume by the ID the CO uses: a Berth volume ID, or kubelet's ID of
// an ephemeral inline volume.
func (s *Server) resolve(id string) (*storage.Pool, *storage.Record, error) {
	p, r, err := s.engine.Volume(id)
	if err == nil {
		return p, r, nil
	}
	if p, r, ok := s.engine.Ephemeral(id); ok {
		return p, r, nil
	}
	return nil, nil, csierr.Status(err)
}
