package controller

import (
	"context"
	"errors"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/volcap"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// GetCapacity answers for one pool (the parameters' pool, else the default) and this
// node's topology: zero for another topology or for capabilities the pool cannot serve.
// A shared pool has the same capacity seen from any topology.
func (s *Server) GetCapacity(_ context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	p, _, err := s.poolFor(req.GetParameters())
	if err != nil {
		return nil, err
	}
	if t := req.GetAccessibleTopology(); t != nil && !p.AccessibleFrom(s.nodeID, t.GetSegments()) {
		return &csi.GetCapacityResponse{}, nil
	}
	if len(req.GetVolumeCapabilities()) > 0 {
		if _, err := volcap.Check(req.GetVolumeCapabilities(), p); err != nil {
			return &csi.GetCapacityResponse{}, nil
		}
	}
	if p.Health() != nil {
		return &csi.GetCapacityResponse{}, nil
	}
	available, maxVolume, err := p.Capacity()
	if errors.Is(err, storage.ErrNotReady) {
		// Found not served just now (a shared pool whose mount is gone): nothing.
		return &csi.GetCapacityResponse{}, nil
	}
	if err != nil {
		return nil, csierr.Status(err)
	}
	return &csi.GetCapacityResponse{
		AvailableCapacity: available,
		MaximumVolumeSize: wrapperspb.Int64(min(available, maxVolume)),
	}, nil
}
