package controller_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/controller"
	"github.com/berth-csi/berth/pkg/locks"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// groupFixture is a controller and a group controller sharing their locks, on an
// engine with its node side (a group must know which pods write its volumes).
type groupFixture struct {
	*fixture
	group *controller.GroupServer
}

// newGroupFixture serves pools; node says whether the engine has its node side.
func newGroupFixture(t *testing.T, node bool, pools ...storage.PoolConfig) *groupFixture {
	t.Helper()
	kubelet := t.TempDir()
	e := testengine.StartWith(t, storage.Config{Pools: pools}, testengine.Options{Before: func(e *storage.Engine) {
		if node {
			if _, err := e.Node(storage.NodeConfig{KubeletDir: kubelet, NodeID: testNode}); err != nil {
				t.Fatal(err)
			}
		}
	}})
	l := &locks.Set{}
	return &groupFixture{fixture: &fixture{srv: controller.New(e, testNode, l), engine: e, locks: l}, group: controller.NewGroup(e, l)}
}

// xfsPool is a dir pool "p" on a fresh XFS with reflinks (as root).
func xfsPool(t *testing.T) storage.PoolConfig {
	mnt := testutil.MountFS(t, testutil.XFSPlain, 1<<30)
	return storage.PoolConfig{Name: "p", Path: filepath.Join(mnt, "p"), Kind: storage.KindDir}
}

func (f *groupFixture) advertised(t *testing.T) bool {
	t.Helper()
	resp, err := f.group.GroupControllerGetCapabilities(context.Background(), &csi.GroupControllerGetCapabilitiesRequest{})
	wantCode(t, err, codes.OK)
	for _, c := range resp.GetCapabilities() {
		if c.GetRpc().GetType() == csi.GroupControllerServiceCapability_RPC_CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT {
			return true
		}
	}
	return false
}

// TestGroupControllerGetCapabilities: CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT is
// advertised only where a group can be taken: a pool with reflinks, and the node
// service in the same process.
func TestGroupControllerGetCapabilities(t *testing.T) {
	if f := newGroupFixture(t, true, dirPool(t.TempDir(), "p")); f.advertised(t) && !reflinkTmp(t) {
		t.Error("advertised on a pool without reflinks")
	}
	testutil.RequireRoot(t)
	if f := newGroupFixture(t, false, xfsPool(t)); f.advertised(t) {
		t.Error("advertised without the node service")
	}
	if f := newGroupFixture(t, true, xfsPool(t)); !f.advertised(t) {
		t.Error("not advertised on XFS with reflinks and the node service")
	}
}

// reflinkTmp reports whether t.TempDir() has reflinks (then a dir pool there can
// take groups).
func reflinkTmp(t *testing.T) bool {
	f := newGroupFixture(t, true, dirPool(t.TempDir(), "probe"))
	return f.engine.GroupSnapshotsServed()
}

// TestCreateVolumeGroupSnapshotErrors: what the spec and Berth refuse, before
// anything is made.
func TestCreateVolumeGroupSnapshotErrors(t *testing.T) {
	f := newGroupFixture(t, true, dirPool(t.TempDir(), "p"))
	vol := f.create(t, "a", "p", 1<<20, nil)
	noReflink := codes.FailedPrecondition
	if reflinkTmp(t) {
		noReflink = codes.OK
	}
	tests := []struct {
		name     string
		req      *csi.CreateVolumeGroupSnapshotRequest
		wantCode codes.Code
	}{
		{"no name", &csi.CreateVolumeGroupSnapshotRequest{SourceVolumeIds: []string{vol}}, codes.InvalidArgument},
		{"name that is no valid name", &csi.CreateVolumeGroupSnapshotRequest{Name: "a/b", SourceVolumeIds: []string{vol}}, codes.InvalidArgument},
		{"no source volume", &csi.CreateVolumeGroupSnapshotRequest{Name: "g"}, codes.InvalidArgument},
		{"source ID that is no valid name", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{vol, "../x"}}, codes.InvalidArgument},
		{"same volume twice", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{vol, vol}}, codes.InvalidArgument},
		{"unknown parameter", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{vol}, Parameters: map[string]string{"fast": "yes"}}, codes.InvalidArgument},
		{"unknown volume", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{vol, unknownID}}, codes.NotFound},
		{"pool without reflinks (sidecar parameters accepted)", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{vol},
			Parameters: map[string]string{"csi.storage.k8s.io/volumegroupsnapshot/name": "vgs", "csi.storage.k8s.io/volumegroupsnapshotcontent/name": "vgsc"}}, noReflink},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.group.CreateVolumeGroupSnapshot(context.Background(), tc.req)
			wantCode(t, err, tc.wantCode)
		})
	}
	// Another operation on one of the volumes: Aborted at once.
	f.locks.TryAcquire(vol)
	_, err := f.group.CreateVolumeGroupSnapshot(context.Background(), &csi.CreateVolumeGroupSnapshotRequest{Name: "busy", SourceVolumeIds: []string{vol}})
	wantCode(t, err, codes.Aborted)
	f.locks.Release(vol)
}

// TestGetDeleteVolumeGroupSnapshotErrors: the spec's answers for IDs that name no
// group (csi-sanity's group specs ask these).
func TestGetDeleteVolumeGroupSnapshotErrors(t *testing.T) {
	f := newGroupFixture(t, true, dirPool(t.TempDir(), "p"))
	for _, tc := range []struct {
		name       string
		id         string
		get, delet codes.Code
	}{
		{"empty ID", "", codes.InvalidArgument, codes.InvalidArgument},
		{"ID that is no valid name", "../g", codes.InvalidArgument, codes.InvalidArgument},
		{"not in Berth's format", "not-a-berth-volume-id", codes.NotFound, codes.OK},
		{"unknown", "g1-p-0123456789abcdef0123456789abcdef", codes.NotFound, codes.OK},
		{"of a pool not configured here", "g1-elsewhere-0123456789abcdef0123456789abcdef", codes.NotFound, codes.FailedPrecondition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.group.GetVolumeGroupSnapshot(context.Background(), &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: tc.id})
			wantCode(t, err, tc.get)
			_, err = f.group.DeleteVolumeGroupSnapshot(context.Background(), &csi.DeleteVolumeGroupSnapshotRequest{GroupSnapshotId: tc.id})
			wantCode(t, err, tc.delet)
		})
	}
}

// TestVolumeGroupSnapshotLifecycle follows a group through the spec: created once
// by name, its snapshots ordinary ones (listed, got, restored) that name the group
// and go only with it, fetched and deleted with its snapshot IDs checked.
func TestVolumeGroupSnapshotLifecycle(t *testing.T) {
	testutil.RequireRoot(t)
	f := newGroupFixture(t, true, xfsPool(t))
	a, b, c := f.create(t, "a", "p", 1<<20, nil), f.create(t, "b", "p", 1<<20, nil), f.create(t, "c", "p", 1<<20, nil)
	req := &csi.CreateVolumeGroupSnapshotRequest{Name: "groupsnapshot-1", SourceVolumeIds: []string{a, b},
		Parameters: map[string]string{"csi.storage.k8s.io/volumegroupsnapshot/name": "vgs"}}
	resp, err := f.group.CreateVolumeGroupSnapshot(context.Background(), req)
	wantCode(t, err, codes.OK)
	g := resp.GetGroupSnapshot()
	if g.GetGroupSnapshotId() == "" || !g.GetReadyToUse() || g.GetCreationTime() == nil || len(g.GetSnapshots()) != 2 {
		t.Fatalf("group snapshot %v: want an ID, ready, a creation time and 2 snapshots", g)
	}
	var ids []string
	sources := map[string]bool{}
	for _, s := range g.GetSnapshots() {
		if s.GetGroupSnapshotId() != g.GetGroupSnapshotId() || !s.GetReadyToUse() || !proto.Equal(s.GetCreationTime(), g.GetCreationTime()) || s.GetSizeBytes() != 1<<20 {
			t.Errorf("snapshot %v: want ready, of group %s, taken at %v, 1 MiB", s, g.GetGroupSnapshotId(), g.GetCreationTime())
		}
		sources[s.GetSourceVolumeId()] = true
		ids = append(ids, s.GetSnapshotId())
	}
	if !sources[a] || !sources[b] {
		t.Errorf("snapshots of %v, want of %s and %s", sources, a, b)
	}

	// Idempotent by name (the sources in any order); AlreadyExists for others.
	again, err := f.group.CreateVolumeGroupSnapshot(context.Background(), &csi.CreateVolumeGroupSnapshotRequest{Name: "groupsnapshot-1", SourceVolumeIds: []string{b, a}})
	wantCode(t, err, codes.OK)
	if !proto.Equal(again.GetGroupSnapshot(), g) {
		t.Errorf("repeated request: %v, want %v", again.GetGroupSnapshot(), g)
	}
	_, err = f.group.CreateVolumeGroupSnapshot(context.Background(), &csi.CreateVolumeGroupSnapshotRequest{Name: "groupsnapshot-1", SourceVolumeIds: []string{a, c}})
	wantCode(t, err, codes.AlreadyExists)

	// Get, with the snapshot IDs in any order; a mismatch is InvalidArgument.
	got, err := f.group.GetVolumeGroupSnapshot(context.Background(), &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: g.GetGroupSnapshotId(), SnapshotIds: []string{ids[1], ids[0]}})
	wantCode(t, err, codes.OK)
	if !proto.Equal(got.GetGroupSnapshot(), g) {
		t.Errorf("GetVolumeGroupSnapshot: %v, want %v", got.GetGroupSnapshot(), g)
	}
	_, err = f.group.GetVolumeGroupSnapshot(context.Background(), &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: g.GetGroupSnapshotId(), SnapshotIds: ids[:1]})
	wantCode(t, err, codes.InvalidArgument)

	// The snapshots are ordinary ones: got, listed, restored; deleted only with the group.
	for _, id := range ids {
		s, err := f.srv.GetSnapshot(context.Background(), &csi.GetSnapshotRequest{SnapshotId: id})
		wantCode(t, err, codes.OK)
		if s.GetSnapshot().GetGroupSnapshotId() != g.GetGroupSnapshotId() {
			t.Errorf("GetSnapshot(%s): group %q, want %s", id, s.GetSnapshot().GetGroupSnapshotId(), g.GetGroupSnapshotId())
		}
		list, err := f.srv.ListSnapshots(context.Background(), &csi.ListSnapshotsRequest{SnapshotId: id})
		wantCode(t, err, codes.OK)
		if len(list.GetEntries()) != 1 || list.GetEntries()[0].GetSnapshot().GetGroupSnapshotId() != g.GetGroupSnapshotId() {
			t.Errorf("ListSnapshots(%s): %v, want it with its group", id, list.GetEntries())
		}
		_, err = f.srv.DeleteSnapshot(context.Background(), &csi.DeleteSnapshotRequest{SnapshotId: id})
		wantCode(t, err, codes.InvalidArgument) // the spec's "Snapshot is part of a group"
	}
	restored := f.create(t, "restored", "p", 1<<20, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: ids[0]}}})
	if !f.exists(restored) {
		t.Fatal("the volume restored from a group's snapshot does not exist")
	}

	// Delete: the snapshot IDs must be the group's; then the group and its snapshots
	// go; again, success.
	_, err = f.group.DeleteVolumeGroupSnapshot(context.Background(), &csi.DeleteVolumeGroupSnapshotRequest{GroupSnapshotId: g.GetGroupSnapshotId(), SnapshotIds: []string{ids[0], unknownSnapshot}})
	wantCode(t, err, codes.InvalidArgument)
	for range 2 {
		_, err = f.group.DeleteVolumeGroupSnapshot(context.Background(), &csi.DeleteVolumeGroupSnapshotRequest{GroupSnapshotId: g.GetGroupSnapshotId(), SnapshotIds: ids})
		wantCode(t, err, codes.OK)
	}
	_, err = f.group.GetVolumeGroupSnapshot(context.Background(), &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: g.GetGroupSnapshotId(), SnapshotIds: ids})
	wantCode(t, err, codes.NotFound)
	for _, id := range ids {
		_, err := f.srv.GetSnapshot(context.Background(), &csi.GetSnapshotRequest{SnapshotId: id})
		wantCode(t, err, codes.NotFound)
	}
	if !f.exists(restored) {
		t.Error("the restored volume went with the group")
	}
}

const unknownSnapshot = "s1-p-0123456789abcdef0123456789abcdef"
