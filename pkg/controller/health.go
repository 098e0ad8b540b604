package controller

import (
	"context"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/volhealth"
	"github.com/container-storage-interface/spec/lib/go/csi"
)

// ControllerGetVolumeHealth reports a volume's condition: its pool served, its data
// directory present, its filesystem writable.
func (s *Server) ControllerGetVolumeHealth(_ context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, required("volume_id")
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
	if err := checkMaxEntries(req.GetMaxEntries()); err != nil {
		return nil, err
	}
	rest, err := s.engine.VolumesFrom(req.GetStartingToken())
	if err != nil {
		return nil, csierr.Status(err)
	}
	resp := &csi.ControllerListVolumeHealthResponse{}
	for _, r := range rest {
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
