package kubectlberth

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// The fixture cluster: three nodes, one of whose driver pods is not running, and
// one of everything doctor looks for.
//
//	node-a: pool default (dir, served) holds team-a/data, team-a/archive's (its
//	        PV Released) and an orphan once made for old/retained; pool fast (quota) is not served (MountFailed), and
//	        team-a/fast's volume is in it; team-a/gone's volume is missing.
//	node-b: pool default holds team-b/logs (unhealthy, its restore stuck at 1 of
//	        3 GiB) and an inline ephemeral volume; one damaged record, one frozen
//	        filesystem in both reads, two project IDs repaired.
//	node-c: its driver pod is Pending.
func fixture(t *testing.T) *world {
	t.Helper()
	objs := []runtime.Object{
		nodePod("berth-node-a", "node-a", corev1.PodRunning),
		nodePod("berth-node-b", "node-b", corev1.PodRunning),
		nodePod("berth-node-c", "node-c", corev1.PodPending),
		pv("pv-data", idData, "node-a", "team-a", "data", "1Gi", corev1.VolumeBound),
		pv("pv-gone", idGone, "node-a", "team-a", "gone", "1Gi", corev1.VolumeBound),
		pv("pv-fast", idFastData, "node-a", "team-a", "fast", "1Gi", corev1.VolumeBound),
		pv("pv-adopted", "adopted-srv-photos", "node-a", "team-a", "photos", "10Gi", corev1.VolumeBound),
		pv("pv-logs", idLogs, "node-b", "team-b", "logs", "4Gi", corev1.VolumeBound),
		pv("pv-kept", idKept, "node-a", "team-a", "archive", "512Mi", corev1.VolumeReleased),
	}
	w := newWorld(t, objs...)
	w.addVSC(t, "snapcontent-1", "berth.csi.io", idData)
	w.addVSC(t, "snapcontent-2", "berth.csi.io", idData)
	w.addVSC(t, "snapcontent-3", "berth.csi.io", idLogs)
	w.addVSC(t, "snapcontent-4", "other.csi.example.com", idData)

	nodeA := newExposition().
		pool(PoolFacts{Node: "node-a", Pool: "default", Kind: "dir", Served: true, CapacityBytes: i64(100 * gib), UsedBytes: i64(40 * gib),
			FreeBytes: i64(60 * gib), AllocatedBytes: 3*gib + 512*mib, Volumes: 3, Snapshots: 2}).
		pool(PoolFacts{Node: "node-a", Pool: "fast", Kind: "quota", Reason: "MountFailed", AllocatedBytes: gib, Volumes: 1}).
		volume(VolumeFacts{ID: idData, Pool: "default", Namespace: "team-a", Claim: "data", CapacityBytes: gib, UsedBytes: i64(256 * mib), Healthy: true}).
		volume(VolumeFacts{ID: idKept, Pool: "default", Namespace: "team-a", Claim: "archive", CapacityBytes: 512 * mib, UsedBytes: i64(0), Healthy: true}).
		volume(VolumeFacts{ID: idOrphan, Pool: "default", Namespace: "old", Claim: "retained", CapacityBytes: 2 * gib, UsedBytes: i64(1536 * mib), Healthy: true}).
		String()
	w.serve("berth-node-a", 9811, nodeA)

	nodeB := func(done int64) string {
		return newExposition().
			pool(PoolFacts{Node: "node-b", Pool: "default", Kind: "dir", Served: true, CapacityBytes: i64(50 * gib), UsedBytes: i64(5 * gib),
				FreeBytes: i64(45*gib + 512*mib), AllocatedBytes: 4*gib + 64*mib, Volumes: 2, Snapshots: 1, DamagedVolumes: 1,
				VolumeCopies: 1, Frozen: 1, ProjectIDRepairs: 2}).
			volume(VolumeFacts{ID: idLogs, Pool: "default", Namespace: "team-b", Claim: "logs", CapacityBytes: 4 * gib, Healthy: false}).
			volume(VolumeFacts{ID: idInline, Pool: "default", CapacityBytes: 64 * mib, Healthy: true, Ephemeral: true}).
			copy(CopyFacts{VolumeID: idLogs, Pool: "default", DoneBytes: done, TotalBytes: 3 * gib}).
			String()
	}
	w.serve("berth-node-b", 9811, nodeB(gib), nodeB(gib))
	return w
}
