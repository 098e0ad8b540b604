package storage_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/podfreeze"
)

// TestGroupSnapshotDirVolumes takes a group snapshot of two dir volumes on an XFS
// with reflinks and follows it through its life: the members are ordinary snapshots
// naming their group, restored as volumes with their source's bytes, counted against
// the pool; a repeated request (sources in another order) is the same group; the same
// name for other volumes is refused; a member cannot be deleted alone; the group's
// deletion takes its members and their capacity with it, and is idempotent.
func TestGroupSnapshotDirVolumes(t *testing.T) {
	pc := loopPool(t, testutil.XFSPlain, storage.KindDir)
	s := newGroupSite(t, storage.Host{}, pc)
	p := s.pool("default")
	a := s.create("default", "pvc-a", "", 640*mib)
	b := s.create("default", "pvc-b", "", 320*mib)
	c := s.create("default", "pvc-c", "", 16*mib)
	writeFile(t, filepath.Join(p.DataPath(a.Hash()), "a.txt"), "volume a")
	writeFile(t, filepath.Join(p.DataPath(b.Hash()), "b.txt"), "volume b")
	before := available(t, p)

	g := s.mustGroup("groupsnapshot-1", b, a)
	if want := storage.GroupSnapshotID("default", "groupsnapshot-1"); g.ID != want {
		t.Fatalf("group ID %s, want %s", g.ID, want)
	}
	if len(g.Snapshots) != 2 || g.CreatedAt.IsZero() {
		t.Fatalf("group %+v: want 2 snapshots and a creation time", g)
	}
	for _, m := range g.Snapshots {
		if !m.Ready || m.Group != g.ID || !m.CreatedAt.Equal(g.CreatedAt) {
			t.Errorf("member %+v: want ready, group %s, created at the group's instant %v", m, g.ID, g.CreatedAt)
		}
		if got, err := s.e.Snapshot(m.ID); err != nil || got.Group != g.ID {
			t.Errorf("Snapshot(%s) = %+v, %v: want it, naming its group", m.ID, got, err)
		}
	}
	if got := available(t, p); got != before-960*mib {
		t.Errorf("available %d with the group, want %d (its members count as snapshots)", got, before-960*mib)
	}
	// Restored as ordinary volumes, with the bytes their sources had.
	ra := s.restore("restored-a", memberOf(t, g, a))
	rb := s.restore("restored-b", memberOf(t, g, b))
	assertContent(t, filepath.Join(p.DataPath(ra.Hash()), "a.txt"), "volume a")
	assertContent(t, filepath.Join(p.DataPath(rb.Hash()), "b.txt"), "volume b")

	// Idempotent by name, whatever the order of the sources.
	again := s.mustGroup("groupsnapshot-1", a, b)
	if again.ID != g.ID || !slices.Equal(again.SnapshotIDs, g.SnapshotIDs) || !again.CreatedAt.Equal(g.CreatedAt) {
		t.Errorf("repeated request: %+v, want %+v", again, g)
	}
	if _, err := s.group(context.Background(), "groupsnapshot-1", a, c); !errors.Is(err, storage.ErrExists) {
		t.Errorf("same name, other volumes: %v, want ErrExists", err)
	}
	if _, err := s.group(context.Background(), "groupsnapshot-1", a); !errors.Is(err, storage.ErrExists) {
		t.Errorf("same name, fewer volumes: %v, want ErrExists", err)
	}
	// Get, with and without the members' IDs.
	if got, err := s.e.GroupSnapshot(g.ID, nil); err != nil || got.ID != g.ID || len(got.Snapshots) != 2 {
		t.Errorf("GroupSnapshot = %+v, %v", got, err)
	}
	if _, err := s.e.GroupSnapshot(g.ID, []string{g.SnapshotIDs[1], g.SnapshotIDs[0]}); err != nil {
		t.Errorf("GroupSnapshot with its members in another order: %v", err)
	}
	if _, err := s.e.GroupSnapshot(g.ID, g.SnapshotIDs[:1]); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("GroupSnapshot with a member missing from snapshot_ids: %v, want ErrInvalid", err)
	}
	// A member goes with its group only.
	if err := s.e.DeleteSnapshot(context.Background(), g.SnapshotIDs[0]); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("DeleteSnapshot of a member: %v, want ErrInvalid", err)
	}
	if err := s.e.DeleteGroupSnapshot(context.Background(), g.ID, []string{g.SnapshotIDs[0], "s1-default-0123456789abcdef0123456789abcdef"}); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("DeleteGroupSnapshot with other snapshot_ids: %v, want ErrInvalid", err)
	}
	// The group survives a restart as it is.
	s.restart()
	p = s.pool("default")
	if got, err := s.e.GroupSnapshot(g.ID, g.SnapshotIDs); err != nil || !got.CreatedAt.Equal(g.CreatedAt) {
		t.Fatalf("GroupSnapshot after a restart = %+v, %v", got, err)
	}
	if err := s.e.DeleteGroupSnapshot(context.Background(), g.ID, g.SnapshotIDs); err != nil {
		t.Fatal(err)
	}
	for _, id := range g.SnapshotIDs {
		if _, err := s.e.Snapshot(id); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("member %s after the group's deletion: %v, want ErrNotFound", id, err)
		}
	}
	if _, err := s.e.GroupSnapshot(g.ID, nil); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("GroupSnapshot after deletion: %v, want ErrNotFound", err)
	}
	if err := s.e.DeleteGroupSnapshot(context.Background(), g.ID, g.SnapshotIDs); err != nil {
		t.Errorf("second DeleteGroupSnapshot: %v, want success", err)
	}
	for _, id := range []string{"not-a-berth-id", "g1-nopool-0123456789abcdef0123456789abcdef"} {
		if err := s.e.DeleteGroupSnapshot(context.Background(), id, nil); err != nil && !errors.Is(err, storage.ErrPrecondition) {
			t.Errorf("DeleteGroupSnapshot(%s): %v", id, err)
		}
	}
	// Restored volumes outlive the group; deleting them gives back every byte.
	mustDelete(t, p, ra.Hash())
	mustDelete(t, p, rb.Hash())
	if got := available(t, p); got != before {
		t.Errorf("available %d after the group and its restores are gone, want %d", got, before)
	}
	// The name is free again, for any volumes.
	s.mustGroup("groupsnapshot-1", a, c)
}

// TestGroupSnapshotRefusals: what cannot be taken consistently is refused, naming
// why, and leaves nothing behind.
func TestGroupSnapshotRefusals(t *testing.T) {
	xfs := loopPool(t, testutil.XFSPlain, storage.KindDir)
	ext4 := loopPool(t, testutil.Ext4Plain, storage.KindDir)
	ext4.Name = "plain"
	// Pods are looked for in a directory that holds no cgroups: never in the
	// machine's, where another test's (or a real kubelet's) pods live.
	host := storage.RealHost()
	host.Pods = podfreeze.New(t.TempDir())
	s := newGroupSite(t, host, xfs, ext4)
	a := s.create("default", "pvc-a", "", mib)
	b := s.create("default", "pvc-b", "", mib)
	c := s.create("plain", "pvc-c", "", mib)
	d := s.create("plain", "pvc-d", "", mib)
	otherNode := storage.VolumeID("default", "pvc-elsewhere")

	for _, tc := range []struct {
		name    string
		sources []string
		want    error
	}{
		{"no reflinks", []string{c.ID, d.ID}, storage.ErrPrecondition},
		{"one member without reflinks", []string{a.ID, c.ID}, storage.ErrPrecondition},
		{"unknown volume", []string{a.ID, otherNode}, storage.ErrNotFound},
		{"not a Berth ID", []string{"not-a-volume"}, storage.ErrNotFound},
		{"hostile ID", []string{a.ID, "../../etc"}, storage.ErrInvalid},
		{"same volume twice", []string{a.ID, b.ID, a.ID}, storage.ErrInvalid},
		{"no volume", nil, storage.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.e.CreateGroupSnapshot(context.Background(), "group-refused", tc.sources)
			if !errors.Is(err, tc.want) {
				t.Fatalf("CreateGroupSnapshot(%v) = %v, want %v", tc.sources, err, tc.want)
			}
			t.Log(err)
		})
	}
	for _, pc := range []storage.PoolConfig{xfs, ext4} {
		for _, d := range []string{"snapshots", "groups", "tmp"} {
			if entries, _ := os.ReadDir(filepath.Join(pc.Path, d)); len(entries) != 0 {
				t.Errorf("%s/%s holds %d entries after refusals, want none", pc.Name, d, len(entries))
			}
		}
	}
	// A volume published read-write where no pod is: its writer cannot be paused.
	target := filepath.Join(s.kubelet, "plugins", "target")
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := s.n.Publish(context.Background(), storage.PublishRequest{VolumeID: a.ID, TargetPath: target, Capability: mountCap("")}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.n.Unpublish(context.Background(), a.ID, target) })
	if _, err := s.group(context.Background(), "group-published", a, b); !errors.Is(err, storage.ErrPrecondition) {
		t.Errorf("a volume published outside any pod: %v, want ErrPrecondition", err)
	} else {
		t.Log(err)
	}
	// Read-only, it has no writer to pause.
	if err := s.n.Unpublish(context.Background(), a.ID, target); err != nil {
		t.Fatal(err)
	}
	if err := s.n.Publish(context.Background(), storage.PublishRequest{VolumeID: a.ID, TargetPath: target, Capability: mountCap(""), ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	s.mustGroup("group-read-only", a, b)
	// A pod whose cgroup cannot be found.
	s.publish(b, "0f2c6a1e-4b7d-4e55-9a3c-2d1f0e8b7c6a")
	if _, err := s.group(context.Background(), "group-pod", a, b); !errors.Is(err, storage.ErrPrecondition) {
		t.Errorf("a volume written by a pod without a cgroup: %v, want ErrPrecondition", err)
	} else {
		t.Log(err)
	}
}

// TestGroupSnapshotNeedsTheNodeService: an engine without its node side cannot know
// which pods write a volume, and refuses.
func TestGroupSnapshotNeedsTheNodeService(t *testing.T) {
	e := startEngine(t, loopPool(t, testutil.XFSPlain, storage.KindDir))
	a := mustCreate(t, e.DefaultPool(), "pvc-a", mib)
	if _, err := e.CreateGroupSnapshot(context.Background(), "g", []string{a.ID}); !errors.Is(err, storage.ErrPrecondition) {
		t.Fatalf("without a node side: %v, want ErrPrecondition", err)
	}
	if e.GroupSnapshotsServed() {
		t.Error("GroupSnapshotsServed without a node side")
	}
}

// TestGroupSnapshotCrashRecovery: start-up leaves either a complete group or none.
// A group whose record never committed (a crash after its members' commit, or a
// deletion that stopped after the group's record) loses its members and their
// capacity; a half-built group entry under tmp/ is rolled back and the pods it
// recorded as paused are resumed.
func TestGroupSnapshotCrashRecovery(t *testing.T) {
	pc := loopPool(t, testutil.XFSPlain, storage.KindDir)
	s := newGroupSite(t, storage.Host{}, pc)
	p := s.pool("default")
	// Sizes large enough that the accounting, not the filesystem's free space,
	// bounds what the pool has available.
	a := s.create("default", "pvc-a", "", 512*mib)
	b := s.create("default", "pvc-b", "", 512*mib)
	before := available(t, p)
	kept := s.mustGroup("kept", a, b)
	lost := s.mustGroup("lost", a, b)

	// "lost" as a crash before its record's commit leaves it: members, no group.
	lostDir := filepath.Join(pc.Path, "groups", lost.ID[len(lost.ID)-32:])
	if err := os.Rename(lostDir, filepath.Join(pc.Path, "tmp", "g"+lost.ID[len(lost.ID)-32:]+".crashed")); err != nil {
		t.Fatal(err)
	}
	s.restart()
	p = s.pool("default")
	for _, id := range lost.SnapshotIDs {
		if _, err := s.e.Snapshot(id); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("member %s of the uncommitted group after start-up: %v, want ErrNotFound", id, err)
		}
	}
	if got, err := s.e.GroupSnapshot(kept.ID, kept.SnapshotIDs); err != nil || len(got.Snapshots) != 2 {
		t.Errorf("the committed group after start-up: %+v, %v", got, err)
	}
	if got := available(t, p); got != before-1024*mib {
		t.Errorf("available %d after recovery, want %d (the kept group's members only)", got, before-1024*mib)
	}
	if entries, _ := os.ReadDir(filepath.Join(pc.Path, "tmp")); len(entries) != 0 {
		t.Errorf("tmp/ holds %d entries after start-up, want none", len(entries))
	}
	// A deletion is idempotent after such a recovery.
	if err := s.e.DeleteGroupSnapshot(context.Background(), lost.ID, lost.SnapshotIDs); err != nil {
		t.Errorf("DeleteGroupSnapshot of the recovered group: %v", err)
	}
}

// TestGroupSnapshotRecoveryResumesPausedPods: a driver killed while a group held
// pods paused leaves their cgroups in its entry's record; start-up thaws them.
func TestGroupSnapshotRecoveryResumesPausedPods(t *testing.T) {
	pc := loopPool(t, testutil.XFSPlain, storage.KindDir)
	s, pod := newPausableSite(t, testutil.RequireCgroupVersions(t)[0], pc)
	freezer := podfreeze.New(pod.cg.Root)
	if _, err := freezer.Freeze(context.Background(), pod.pod); err != nil {
		t.Fatal(err)
	}
	entry := filepath.Join(pc.Path, "tmp", "g0123456789abcdef0123456789abcdef.0011223344556677")
	if err := os.Mkdir(entry, 0o700); err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(map[string][]string{"cgroups": {pod.pod}})
	writeFile(t, filepath.Join(entry, "paused.json"), string(data))
	s.restart()
	if frozen, err := freezer.Frozen(pod.pod); err != nil || frozen {
		t.Fatalf("pod cgroup frozen after start-up: %v, %v; want thawed", frozen, err)
	}
	if _, err := os.Stat(entry); !os.IsNotExist(err) {
		t.Errorf("the group's entry after start-up: %v, want it rolled back", err)
	}
}
