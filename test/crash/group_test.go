package crash

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestCrashGroupSnapshots kills the driver (SIGKILL) at random instants of
// CreateVolumeGroupSnapshot: a group of two dir volumes on an XFS with reflinks, both
// written by a process of the pod that publishes them, which each group pauses
// (its cgroup frozen). After every restart: the group exists with both its members,
// or neither it nor any member exists; nothing is left under tmp/; the pod runs
// again; and the same request then succeeds. BERTH_GROUP_KILLS sets the rounds.
func TestCrashGroupSnapshots(t *testing.T) {
	versions := testutil.RequireCgroupVersions(t)
	const pod = "0f2c6a1e-4b7d-4e55-9a3c-2d1f0e8b7c6a"
	kills := testutil.EnvInt(t, "BERTH_GROUP_KILLS", 20, 1)
	mnt := testutil.MountFS(t, testutil.XFSPlain, 1<<30)
	s := newSite(t, driverBinary(t))
	s.pool = filepath.Join(mnt, "pool")
	cfg := fmt.Sprintf("pools:\n- name: default\n  path: %s\n  kind: dir\n  reservedBytes: 0\n  overcommit: true\n", strconv.Quote(s.pool))
	if err := os.WriteFile(s.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testutil.UnmountTree(t, s.kubelet) })
	cg := testutil.MakeCgroups(t, versions[0])
	container := cg.Pod(t, pod)
	s.args = []string{"--cgroup-root", cg.Root}

	p := s.start(t)
	var vols []string
	var log string
	for _, name := range []string{"a", "b"} {
		resp, err := p.ctrl.CreateVolume(t.Context(), &csi.CreateVolumeRequest{Name: "pvc-" + name,
			CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, VolumeCapabilities: []*csi.VolumeCapability{rwoMount()}})
		if err != nil {
			t.Fatal(err)
		}
		id := resp.GetVolume().GetVolumeId()
		target := filepath.Join(s.kubelet, "pods", pod, "volumes", "kubernetes.io~csi", "pv-"+name, "mount")
		if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
			t.Fatal(err)
		}
		if _, err := p.node().NodePublishVolume(t.Context(), &csi.NodePublishVolumeRequest{
			VolumeId: id, TargetPath: target, VolumeCapability: rwoMount()}); err != nil {
			t.Fatal(err)
		}
		vols = append(vols, id)
		log = filepath.Join(target, "log")
	}
	cg.Start(t, container, exec.Command("sh", "-c", `read go; while :; do echo x >> "$0"; done`, log))
	group := csi.NewGroupControllerClient(p.conn)

	// Calibrate: how long one group takes here.
	start := time.Now()
	if _, err := group.CreateVolumeGroupSnapshot(t.Context(), &csi.CreateVolumeGroupSnapshotRequest{Name: "calibrate", SourceVolumeIds: vols}); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)

	seed := crashSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0))
	outcomes := map[string]int{}
	for i := range kills {
		name := fmt.Sprintf("groupsnapshot-%d", i)
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err := csi.NewGroupControllerClient(p.conn).CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: name, SourceVolumeIds: vols})
			done <- err
		}()
		time.Sleep(time.Duration(rng.Int64N(int64(2 * took))))
		p.kill()
		acked := <-done == nil
		paused := pausedLeft(t, s.pool)
		p = s.start(t)
		group = csi.NewGroupControllerClient(p.conn)
		outcome := checkGroup(t, p, name, vols, acked)
		if paused {
			outcome += ", pod left paused"
		}
		outcomes[outcome]++
		if entries, _ := os.ReadDir(filepath.Join(s.pool, "tmp")); len(entries) != 0 {
			t.Fatalf("round %d: tmp/ holds %d entries after start-up", i, len(entries))
		}
		testutil.WaitGrows(t, log, true)
		// The provisioner's retry succeeds, complete.
		if _, err := group.CreateVolumeGroupSnapshot(t.Context(), &csi.CreateVolumeGroupSnapshotRequest{Name: name, SourceVolumeIds: vols}); err != nil {
			t.Fatalf("round %d: retry: %v", i, err)
		}
		if got := checkGroup(t, p, name, vols, true); got != "complete" {
			t.Fatalf("round %d: after the retry the group is %s", i, got)
		}
	}
	t.Logf("kills: %d (one group takes %v; seed %d): %v", kills, took, seed, outcomes)
}

func rwoMount() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// checkGroup checks that group name of vols is complete (with both its members) or
// absent (and none of its members either), and says which; acknowledged groups must
// be complete.
func checkGroup(t *testing.T, p *proc, name string, vols []string, acked bool) string {
	t.Helper()
	id := storage.GroupSnapshotID("default", name)
	var members []string
	for _, v := range vols {
		m, err := storage.MemberSnapshotID(name, v)
		if err != nil {
			t.Fatal(err)
		}
		members = append(members, m)
	}
	_, err := csi.NewGroupControllerClient(p.conn).GetVolumeGroupSnapshot(t.Context(), &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: id, SnapshotIds: members})
	switch status.Code(err) {
	case codes.OK:
		for _, m := range members {
			s, err := p.ctrl.GetSnapshot(t.Context(), &csi.GetSnapshotRequest{SnapshotId: m})
			if err != nil || s.GetSnapshot().GetGroupSnapshotId() != id || !s.GetSnapshot().GetReadyToUse() {
				t.Fatalf("group %s exists, its snapshot %s: %v, %v", id, m, s, err)
			}
		}
		return "complete"
	case codes.NotFound:
		if acked {
			t.Fatalf("group %s was acknowledged and is gone after the restart", id)
		}
		for _, m := range members {
			if _, err := p.ctrl.GetSnapshot(t.Context(), &csi.GetSnapshotRequest{SnapshotId: m}); status.Code(err) != codes.NotFound {
				t.Fatalf("group %s does not exist but its snapshot %s does: %v", id, m, err)
			}
		}
		return "absent"
	}
	t.Fatalf("GetVolumeGroupSnapshot %s: %v", id, err)
	return ""
}

// pausedLeft reports whether a killed driver left a record of pods it paused.
func pausedLeft(t *testing.T, pool string) bool {
	matches, err := filepath.Glob(filepath.Join(pool, "tmp", "g*", "paused.json"))
	if err != nil {
		t.Fatal(err)
	}
	return len(matches) > 0
}
