package controller

import (
	"context"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/volhealth"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ControllerGetVolumeHealth reports a volume's condition: its pool served, its data
// directory present, its filesystem writable.
func (s *Server) ControllerGetVolumeHealth(_ context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	p, r, err := s.engine.Volume(req.GetVolumeId())
	if err != nil {
		return nil, csierr.Status(err)
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: volhealth.Of(r.ID, p.Condition(r.Hash()))}, nil
}

// ControllerListVolumeHealth pages through the volumes that have an adverse condition,
// in ID order, with the same token rules as ListVolumes.
func (s *Server) ControllerListVolumeHealth(_ context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	all := s.engine.AllVolumes()
	start, err := volumePage(all, req.GetMaxEntries(), req.GetStartingToken())
	if err != nil {
		return nil, err
	}
	resp := &csi.ControllerListVolumeHealthResponse{}
	for i := start; i < len(all); i++ {
		r := all[i]
		p, err := s.engine.Pool(r.Pool)
		if err != nil {
			continue
		}
		problems := p.Condition(r.Hash())
		if len(problems) == 0 {
			continue
		}
		if n := int(req.GetMaxEntries()); n > 0 && len(resp.Entries) == n {
			resp.NextToken = r.ID
			break
		}
		resp.Entries = append(resp.Entries, volhealth.Of(r.ID, problems))
	}
	return resp, nil
}
