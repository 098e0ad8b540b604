package controller

import (
	"context"
	"fmt"
	"slices"
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

// poolFor resolves the pool a request's parameters name and returns the parameters
// Berth keeps in the volume record (sidecar-added keys excluded). Parameters must be
// ones the pool's kind understands.
func (s *Server) poolFor(params map[string]string) (*storage.Pool, map[string]string, error) {
	p := s.engine.DefaultPool()
	if name, ok := params[ParamPool]; ok {
		var err error
		if p, err = s.engine.Pool(name); err != nil {
			return nil, nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	known := append([]string{ParamPool}, p.Params()...)
	kept := map[string]string{}
	for k, v := range params {
		switch {
		case strings.HasPrefix(k, sidecarPrefix):
		case slices.Contains(known, k):
			kept[k] = v
		default:
			return nil, nil, status.Errorf(codes.InvalidArgument, "unknown parameter %q for pool %s of kind %s (known: %s)",
				k, p.Name(), p.Config().Kind, strings.Join(known, ", "))
		}
	}
	// Recorded explicitly, so "no pool" and "the default pool by name" are one request.
	kept[ParamPool] = p.Name()
	return p, kept, nil
}

// reachable reports whether the accessibility requirements allow this node, or any
// node for a shared pool (a central controller serves those with no node of its own).
func (s *Server) reachable(p *storage.Pool, req *csi.TopologyRequirement) bool {
	if len(req.GetRequisite()) == 0 || p.Shared() {
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
		if !strings.HasPrefix(k, sidecarPrefix) && k != ParamPool && !slices.Contains(p.Params(), k) {
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

// fsTypeFor picks the filesystem an image volume is formatted with: the fsType
// parameter, else the capabilities' fs_type, else the default. Other kinds have no
// filesystem of their own and record none.
func fsTypeFor(p *storage.Pool, access string, params map[string]string, caps []*csi.VolumeCapability) (string, error) {
	if p.Config().Kind != storage.KindImage || access != storage.AccessMount {
		return "", nil
	}
	fsType := params[storage.ParamFSType]
	for _, c := range caps {
		t := c.GetMount().GetFsType()
		switch {
		case t == "":
		case fsType == "":
			fsType = t
		case t != fsType:
			return "", status.Errorf(codes.InvalidArgument, "fs_type %q conflicts with fsType %q", t, fsType)
		}
	}
	if fsType == "" {
		fsType = storage.DefaultImageFSType
	}
	if !slices.Contains(storage.ImageFSTypes, fsType) {
		return "", status.Errorf(codes.InvalidArgument, "fsType %q is not supported (use one of %v)", fsType, storage.ImageFSTypes)
	}
	return fsType, nil
}
