package storage_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
)

func TestVolumesFrom(t *testing.T) {
	e := startEngine(t, dirPool(t.TempDir(), "default"))
	var ids []string
	for i := range 4 {
		ids = append(ids, mustCreate(t, e.DefaultPool(), fmt.Sprintf("pvc-%d", i), mib).ID)
	}
	slices.Sort(ids)
	idsOf := func(rs []*storage.Record) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.ID)
		}
		return out
	}
	tests := []struct {
		name, token string
		want        []string
		wantErr     error
	}{
		{name: "no token", want: ids},
		{name: "an ID", token: ids[2], want: ids[2:]},
		{name: "past the end", token: "b1-zzz-ffffffffffffffffffffffffffffffff"},
		// A malformed token: the CO starts over (Aborted), not a bad request.
		{name: "garbage", token: "garbage", wantErr: storage.ErrBadToken},
		{name: "a path", token: "../../etc", wantErr: storage.ErrBadToken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.VolumesFrom(tc.token)
			checkErr(t, err, tc.wantErr)
			if err != nil && errors.Is(err, storage.ErrInvalid) {
				t.Fatalf("error %v also matches ErrInvalid", err)
			}
			if !slices.Equal(idsOf(got), tc.want) {
				t.Fatalf("got %v, want %v", idsOf(got), tc.want)
			}
		})
	}
	// The token's own volume deleted meanwhile: the listing resumes after it.
	if err := e.DeleteVolume(context.Background(), ids[2]); err != nil {
		t.Fatal(err)
	}
	got, err := e.VolumesFrom(ids[2])
	if err != nil || !slices.Equal(idsOf(got), ids[3:]) {
		t.Fatalf("after deleting the token's volume: %v, %v; want %v", idsOf(got), err, ids[3:])
	}
}

func TestSnapshotsFrom(t *testing.T) {
	e := startEngine(t, dirPool(t.TempDir(), "default"))
	p := e.DefaultPool()
	ctx := context.Background()
	a, b := mustCreate(t, p, "pvc-a", mib), mustCreate(t, p, "pvc-b", mib)
	var all []string
	for i, src := range []*storage.Record{a, a, b} {
		s, err := p.CreateSnapshot(ctx, fmt.Sprintf("snap-%d", i), src.Hash())
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, s.ID)
	}
	slices.Sort(all)
	ofA := slices.DeleteFunc(slices.Clone(all), func(id string) bool { return id == storage.SnapshotID("default", "snap-2") })
	tests := []struct {
		name, token string
		filter      storage.SnapshotFilter
		want        []string
		wantErr     error
	}{
		{name: "all", want: all},
		{name: "from a token", token: all[1], want: all[1:]},
		{name: "of a source", filter: storage.SnapshotFilter{SourceVolumeID: a.ID}, want: ofA},
		{name: "of a source, from a token", token: ofA[1], filter: storage.SnapshotFilter{SourceVolumeID: a.ID}, want: ofA[1:]},
		{name: "by ID", filter: storage.SnapshotFilter{SnapshotID: all[0]}, want: all[:1]},
		{name: "by ID of another source", filter: storage.SnapshotFilter{SnapshotID: storage.SnapshotID("default", "snap-2"),
			SourceVolumeID: a.ID}},
		{name: "unknown ID", filter: storage.SnapshotFilter{SnapshotID: "s1-default-" + pvcHash}},
		{name: "a volume ID as token", token: a.ID, wantErr: storage.ErrBadToken},
		{name: "garbage token", token: "not-a-token", wantErr: storage.ErrBadToken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.SnapshotsFrom(tc.token, tc.filter)
			checkErr(t, err, tc.wantErr)
			var ids []string
			for _, s := range got {
				ids = append(ids, s.ID)
			}
			if !slices.Equal(ids, tc.want) {
				t.Fatalf("got %v, want %v", ids, tc.want)
			}
		})
	}
}
