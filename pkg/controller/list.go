package controller

import (
	"context"
	"sort"

	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ListVolumes pages through all volumes in ID order. The token is the ID to resume
// from: a page survives volumes created or deleted between calls, and a token that is
// not a volume ID is refused with Aborted, as the spec asks.
func (s *Server) ListVolumes(_ context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	all := s.engine.AllVolumes()
	start, err := volumePage(all, req.GetMaxEntries(), req.GetStartingToken())
	if err != nil {
		return nil, err
	}
	end := len(all)
	if n := int(req.GetMaxEntries()); n > 0 && start+n < end {
		end = start + n
	}
	resp := &csi.ListVolumesResponse{}
	for _, r := range all[start:end] {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{
			Volume: s.volume(r),
			Status: &csi.ListVolumesResponse_VolumeStatus{PublishedNodeIds: s.publishedOn(r.ID)},
		})
	}
	if end < len(all) {
		resp.NextToken = all[end].ID
	}
	return resp, nil
}

// volumePage checks max_entries and finds where a page of volumes (sorted by ID)
// starts: at the first ID not below the token, so a page survives volumes created or
// deleted between calls. A token that is not a volume ID is Aborted, as the spec asks.
func volumePage(all []*storage.Record, maxEntries int32, token string) (int, error) {
	if maxEntries < 0 {
		return 0, status.Errorf(codes.InvalidArgument, "max_entries %d is negative", maxEntries)
	}
	if token == "" {
		return 0, nil
	}
	if _, err := storage.ParseVolumeID(token); err != nil {
		return 0, status.Errorf(codes.Aborted, "starting_token %q is not valid: %v", token, err)
	}
	return sort.Search(len(all), func(i int) bool { return all[i].ID >= token }), nil
}
