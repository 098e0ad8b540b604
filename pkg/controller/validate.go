package controller

import (
	"context"
	"fmt"
	"strings"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/volcap"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ParamPool is the StorageClass parameter that selects a pool.
const ParamPool = "pool"

// sidecarPrefix marks parameters the CSI sidecars add (pvc name, fstype, secrets...).
const sidecarPrefix = "csi.storage.k8s.io/"

// knownParams are the StorageClass parameters Berth understands.
var knownParams = map[string]bool{ParamPool: true}

// poolFor resolves the pool a request's parameters name and returns the parameters
// Berth keeps in the volume record (sidecar-added keys excluded).
func (s *Server) poolFor(params map[string]string) (*storage.Pool, map[string]string, error) {
	kept := map[string]string{}
	for k, v := range params {
		switch {
		case strings.HasPrefix(k, sidecarPrefix):
		case knownParams[k]:
			kept[k] = v
		default:
			return nil, nil, status.Errorf(codes.InvalidArgument, "unknown parameter %q (known: %s)", k, ParamPool)
		}
	}
	p := s.engine.DefaultPool()
	if name, ok := kept[ParamPool]; ok {
		var err error
		if p, err = s.engine.Pool(name); err != nil {
			return nil, nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	// Recorded explicitly, so "no pool" and "the default pool by name" are one request.
	kept[ParamPool] = p.Name()
	return p, kept, nil
}

// reachable reports whether the accessibility requirements allow this node.
func (s *Server) reachable(req *csi.TopologyRequirement) bool {
	if len(req.GetRequisite()) == 0 {
		return true
	}
	for _, t := range req.GetRequisite() {
		if v, ok := t.GetSegments()[TopologyKey]; ok && v == s.nodeID {
			return true
		}
	}
	return false
}

// ValidateVolumeCapabilities confirms the capabilities only when the volume can serve
// every one of them: access type as created, an access mode the pool serves.
func (s *Server) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume_capabilities is required")
	}
	p, r, err := s.engine.Volume(req.GetVolumeId())
	if err != nil {
		return nil, csierr.Status(err)
	}
	for k := range req.GetParameters() {
		if !strings.HasPrefix(k, sidecarPrefix) && !knownParams[k] {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: fmt.Sprintf("unknown parameter %q", k)}, nil
		}
	}
	access, err := volcap.Check(req.GetVolumeCapabilities(), p)
	if err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	if access != r.AccessType {
		return &csi.ValidateVolumeCapabilitiesResponse{
			Message: fmt.Sprintf("volume %s was created for %s access, not %s", r.ID, r.AccessType, access)}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}
