package controller_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

// createN creates n volumes and returns their IDs sorted.
func (f *fixture) createN(t *testing.T, n int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		ids = append(ids, f.mustCreate(t, fmt.Sprintf("pvc-%d", i)).GetVolumeId())
	}
	slices.Sort(ids)
	return ids
}

func entryIDs(resp *csi.ListVolumesResponse) []string {
	var ids []string
	for _, e := range resp.GetEntries() {
		ids = append(ids, e.GetVolume().GetVolumeId())
	}
	return ids
}

func TestListVolumesPaging(t *testing.T) {
	f := newFixture(t)
	want := f.createN(t, 5)
	var pages [][]string
	token := ""
	for range 10 {
		resp, err := f.srv.ListVolumes(context.Background(), &csi.ListVolumesRequest{MaxEntries: 2, StartingToken: token})
		wantCode(t, err, codes.OK)
		pages = append(pages, entryIDs(resp))
		token = resp.GetNextToken()
		if token == "" {
			break
		}
	}
	if len(pages) != 3 || len(pages[0]) != 2 || len(pages[1]) != 2 || len(pages[2]) != 1 {
		t.Fatalf("pages %v, want 2+2+1 entries", pages)
	}
	if got := slices.Concat(pages...); !slices.Equal(got, want) {
		t.Fatalf("pages in order %v, want %v", got, want)
	}
	// Listing again gives the same pages: the order is stable.
	resp, err := f.srv.ListVolumes(context.Background(), &csi.ListVolumesRequest{MaxEntries: 2})
	wantCode(t, err, codes.OK)
	if !slices.Equal(entryIDs(resp), pages[0]) {
		t.Fatalf("first page changed: %v, then %v", pages[0], entryIDs(resp))
	}
}

func TestListVolumesTokenSurvivesDeletion(t *testing.T) {
	f := newFixture(t)
	ids := f.createN(t, 5)
	resp, err := f.srv.ListVolumes(context.Background(), &csi.ListVolumesRequest{MaxEntries: 2})
	wantCode(t, err, codes.OK)
	token := resp.GetNextToken()
	if token != ids[2] {
		t.Fatalf("next_token %q, want %q", token, ids[2])
	}
	_, err = f.srv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: token})
	wantCode(t, err, codes.OK)
	resp, err = f.srv.ListVolumes(context.Background(), &csi.ListVolumesRequest{StartingToken: token})
	wantCode(t, err, codes.OK)
	if got := entryIDs(resp); !slices.Equal(got, ids[3:]) {
		t.Fatalf("after deleting the token's volume: %v, want %v", got, ids[3:])
	}
}

func TestListVolumesRequests(t *testing.T) {
	tests := []struct {
		name        string
		req         *csi.ListVolumesRequest
		wantCode    codes.Code
		wantEntries int
	}{
		{"everything", &csi.ListVolumesRequest{}, codes.OK, 3},
		{"max entries above the count", &csi.ListVolumesRequest{MaxEntries: 100}, codes.OK, 3},
		{"negative max entries", &csi.ListVolumesRequest{MaxEntries: -1}, codes.InvalidArgument, 0},
		{"garbage token", &csi.ListVolumesRequest{StartingToken: "garbage"}, codes.Aborted, 0},
		{"path as token", &csi.ListVolumesRequest{StartingToken: "../../etc"}, codes.Aborted, 0},
		{"token past the end", &csi.ListVolumesRequest{StartingToken: "b1-zzz-ffffffffffffffffffffffffffffffff"}, codes.OK, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.createN(t, 3)
			resp, err := f.srv.ListVolumes(context.Background(), tc.req)
			wantCode(t, err, tc.wantCode)
			if got := len(resp.GetEntries()); got != tc.wantEntries {
				t.Fatalf("%d entries, want %d", got, tc.wantEntries)
			}
		})
	}
}

func TestListVolumesEmpty(t *testing.T) {
	f := newFixture(t)
	resp, err := f.srv.ListVolumes(context.Background(), &csi.ListVolumesRequest{MaxEntries: 2})
	wantCode(t, err, codes.OK)
	if len(resp.GetEntries()) != 0 || resp.GetNextToken() != "" {
		t.Fatalf("empty pool listed %v", resp)
	}
}

func TestListVolumesPublishedNodes(t *testing.T) {
	f := newFixture(t)
	ids := f.createN(t, 2)
	f.engine.AddPublication(ids[0], storage.Publication{TargetPath: "/var/lib/kubelet/pods/p/volumes/v/mount"})
	resp, err := f.srv.ListVolumes(context.Background(), &csi.ListVolumesRequest{})
	wantCode(t, err, codes.OK)
	for _, e := range resp.GetEntries() {
		got := e.GetStatus().GetPublishedNodeIds()
		var want []string
		if e.GetVolume().GetVolumeId() == ids[0] {
			want = []string{testNode}
		}
		if !slices.Equal(got, want) {
			t.Errorf("volume %s: published_node_ids %v, want %v", e.GetVolume().GetVolumeId(), got, want)
		}
	}
}

// listPages follows next_token from a first page until it ends, checking each page's
// size against max; it returns the IDs listed, in order.
func listPages(t *testing.T, max int32, first []string, next string, page func(token string) ([]string, string, error), bound int) []string {
	t.Helper()
	got := slices.Clone(first)
	for token := next; token != ""; {
		ids, n, err := page(token)
		wantCode(t, err, codes.OK)
		if max > 0 && len(ids) > int(max) {
			t.Fatalf("max_entries %d: a page of %d", max, len(ids))
		}
		if len(got) > bound {
			t.Fatalf("next_token never ends: %v", got)
		}
		got, token = append(got, ids...), n
	}
	return got
}

// FuzzListVolumes: a starting_token is refused (Aborted) unless it is a volume ID,
// max_entries only if negative (InvalidArgument); otherwise the pages that follow
// from it list exactly the volumes whose IDs are not below the token, in ID order,
// each page within max_entries.
func FuzzListVolumes(f *testing.F) {
	fx := newFixture(f, dirPool(f.TempDir(), "default"), dirPool(f.TempDir(), "fast"))
	var all []string
	for i := range 6 {
		pool := []string{"default", "fast"}[i%2]
		all = append(all, fx.create(f, fmt.Sprintf("pvc-%d", i), pool, 1<<20, nil))
	}
	slices.Sort(all)
	for _, s := range []string{"", all[0], all[3], all[5] + "0", "b1-default-", "b1-zzz-ffffffffffffffffffffffffffffffff",
		"b1-a-00000000000000000000000000000000", "garbage", "../../etc", unknownID} {
		f.Add(s, int32(2))
	}
	f.Add(all[1], int32(0))
	f.Add(all[2], int32(-1))
	f.Add("", int32(1<<31-1))
	page := func(max int32, token string) ([]string, string, error) {
		resp, err := fx.srv.ListVolumes(context.Background(), &csi.ListVolumesRequest{MaxEntries: max, StartingToken: token})
		return entryIDs(resp), resp.GetNextToken(), err
	}
	f.Fuzz(func(t *testing.T, token string, max int32) {
		ids, next, err := page(max, token)
		_, parseErr := storage.ParseVolumeID(token)
		switch {
		case max < 0:
			wantCode(t, err, codes.InvalidArgument)
			return
		case token != "" && parseErr != nil:
			wantCode(t, err, codes.Aborted)
			return
		}
		wantCode(t, err, codes.OK)
		if max > 0 && len(ids) > int(max) {
			t.Fatalf("max_entries %d: a page of %d", max, len(ids))
		}
		got := listPages(t, max, ids, next, func(tok string) ([]string, string, error) { return page(max, tok) }, len(all))
		want := slices.DeleteFunc(slices.Clone(all), func(id string) bool { return id < token })
		if !slices.Equal(got, want) {
			t.Fatalf("from token %q, max_entries %d: listed %v, want %v", token, max, got, want)
		}
	})
}
