package controller

import (
	"context"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
)

// ListVolumes pages through all volumes in ID order. The token is the ID to resume
// from: a page survives volumes created or deleted between calls, and a token that is
// not a volume ID is refused with Aborted, as the spec asks.
func (s *Server) ListVolumes(_ context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	if err := checkMaxEntries(req.GetMaxEntries()); err != nil {
		return nil, err
	}
	rest, err := s.engine.VolumesFrom(req.GetStartingToken())
	if err != nil {
		return nil, csierr.Status(err)
	}
	vols, next := page(rest, req.GetMaxEntries(), func(r *storage.Record) string { return r.ID })
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, r := range vols {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{
			Volume: s.volume(r),
			Status: &csi.ListVolumesResponse_VolumeStatus{PublishedNodeIds: s.publishedOn(r.ID)},
		})
	}
	return resp, nil
}

// page cuts a listing that starts at the request's token to maxEntries (no limit
// when 0) and returns the next page's token: the ID of its first entry, "" when this
// page is the last.
func page[T any](rest []T, maxEntries int32, id func(T) string) ([]T, string) {
	if n := int(maxEntries); n > 0 && n < len(rest) {
		return rest[:n], id(rest[n])
	}
	return rest, ""
}
