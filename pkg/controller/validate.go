package controller

import (
	"context"
	"fmt"
	"strings"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/server"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/volcap"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ParamPool is the StorageClass parameter that selects a pool.
const ParamPool = storage.ParamPool

// sidecarPrefix marks parameters the CSI sidecars add (pvc name, fstype, secrets...).
const sidecarPrefix = "csi.storage.k8s.io/"

// required refuses a request that lacks field.
func required(field string) error {
	return status.Errorf(codes.InvalidArgument, "%s is required", field)
}

// checkID refuses an empty ID in field, or one that is not even a valid name (it
// could never name a Berth object, and must not reach a path).
func checkID(field, id string) error {
	if id == "" {
		return required(field)
	}
	if err := storage.ValidateName(id); err != nil {
		return status.Errorf(codes.InvalidArgument, "%s: %v", field, err)
	}
	return nil
}

// checkMaxEntries refuses a negative max_entries (zero asks for no limit).
func checkMaxEntries(n int32) error {
	if n < 0 {
		return status.Errorf(codes.InvalidArgument, "max_entries %d is negative", n)
	}
	return nil
}

// ownParams are the parameters of a request that are Berth's: all but those the
// sidecars add.
func ownParams(params map[string]string) map[string]string {
	own := map[string]string{}
	for k, v := range params {
		if !strings.HasPrefix(k, sidecarPrefix) {
			own[k] = v
		}
	}
	return own
}

// claimOf is the claim the provisioner names in the parameters (with
// --extra-create-metadata), or nil.
func claimOf(params map[string]string) *storage.Claim {
	ns, name := params[server.ParamClaimNamespace], params[server.ParamClaimName]
	if ns == "" || name == "" {
		return nil
	}
	return &storage.Claim{Namespace: ns, Name: name}
}

// poolFor resolves the pool a request's parameters name and returns the parameters
// Berth keeps in the volume record (sidecar-added keys excluded). The engine refuses
// an unknown pool, and parameters the pool's kind does not understand.
func (s *Server) poolFor(params map[string]string) (*storage.Pool, map[string]string, error) {
	own := ownParams(params)
	p, err := s.engine.PoolFor(own)
	if err != nil {
		return nil, nil, csierr.Status(err)
	}
	return p, own, nil
}

// ValidateVolumeCapabilities confirms the capabilities only when the volume can serve
// every one of them: access type as created, an access mode the pool serves.
func (s *Server) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, required("volume_id")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, required("volume_capabilities")
	}
	p, r, err := s.engine.Volume(req.GetVolumeId())
	if err != nil {
		return nil, csierr.Status(err)
	}
	if err := p.CheckParams(ownParams(req.GetParameters())); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
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
