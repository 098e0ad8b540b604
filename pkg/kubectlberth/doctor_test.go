package kubectlberth

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// healthyPool is a served dir pool on node with nothing wrong.
func healthyPool(node string) PoolFacts {
	return PoolFacts{Node: node, Pool: "default", Kind: "dir", Served: true, CapacityBytes: i64(10 * gib), UsedBytes: i64(gib), FreeBytes: i64(9 * gib), Volumes: 1}
}

// TestDoctorChecks: each check alone, on one node whose two reads are given, and
// what doctor then reports.
func TestDoctorChecks(t *testing.T) {
	data := VolumeFacts{ID: idData, Pool: "default", Namespace: "team-a", Claim: "data", CapacityBytes: gib, Healthy: true}
	orphan := VolumeFacts{ID: idOrphan, Pool: "default", Namespace: "old", Claim: "retained", CapacityBytes: gib, Healthy: true}
	inline := VolumeFacts{ID: idInline, Pool: "default", CapacityBytes: mib, Healthy: true, Ephemeral: true}
	sick := data
	sick.Healthy = false
	cp := func(done int64) CopyFacts {
		return CopyFacts{VolumeID: idData, Pool: "default", DoneBytes: done, TotalBytes: 2 * gib}
	}
	with := func(f func(*PoolFacts)) PoolFacts {
		p := healthyPool("node-a")
		f(&p)
		return p
	}
	read := func(p PoolFacts, vols []VolumeFacts, copies ...CopyFacts) string {
		e := newExposition().pool(p)
		for _, v := range vols {
			e.volume(v)
		}
		for _, c := range copies {
			e.copy(c)
		}
		return e.String()
	}
	ok := read(healthyPool("node-a"), []VolumeFacts{data})
	for _, tc := range []struct {
		name          string
		first, second string
		noPods        bool
		extraPVs      []runtime.Object
		want          []string // checks, in order; none: exit 0
	}{
		{name: "nothing wrong", first: ok, second: ok},
		{name: "no driver pods", noPods: true, want: []string{CheckNoDriverPods}},
		{name: "metrics unreadable", first: "", second: "", want: []string{CheckMetricsUnreadable}},
		{name: "garbled metrics", first: "berth_pool_served{", second: "berth_pool_served{", want: []string{CheckMetricsUnreadable}},
		{name: "pool not served", first: ok, second: read(with(func(p *PoolFacts) { p.Served, p.Reason = false, "CheckFailed" }), []VolumeFacts{data}),
			want: []string{CheckPoolNotServed}},
		{name: "damaged snapshot record", first: ok, second: read(with(func(p *PoolFacts) { p.DamagedSnapshots = 1 }), []VolumeFacts{data}),
			want: []string{CheckDamagedEntries}},
		{name: "volume missing", first: read(healthyPool("node-a"), nil), second: read(healthyPool("node-a"), nil), want: []string{CheckMissingVolume}},
		{name: "orphan", first: read(healthyPool("node-a"), []VolumeFacts{data, orphan}), second: read(healthyPool("node-a"), []VolumeFacts{data, orphan}),
			want: []string{CheckOrphan}},
		{name: "orphan only in the second read: just created, its PV may follow", first: ok, second: read(healthyPool("node-a"), []VolumeFacts{data, orphan})},
		{name: "orphan of a pool not served: not judged, as by the driver's scan",
			first:  read(with(func(p *PoolFacts) { p.Served, p.Reason = false, "MountLost" }), []VolumeFacts{data, orphan}),
			second: read(with(func(p *PoolFacts) { p.Served, p.Reason = false, "MountLost" }), []VolumeFacts{data, orphan}),
			want:   []string{CheckPoolNotServed}},
		{name: "inline ephemeral volume is no orphan", first: read(healthyPool("node-a"), []VolumeFacts{data, inline}), second: read(healthyPool("node-a"), []VolumeFacts{data, inline})},
		{name: "volume unhealthy", first: ok, second: read(healthyPool("node-a"), []VolumeFacts{sick}), want: []string{CheckVolumeUnhealthy}},
		{name: "frozen in both reads", first: read(with(func(p *PoolFacts) { p.Frozen = 1 }), []VolumeFacts{data}),
			second: read(with(func(p *PoolFacts) { p.Frozen = 1 }), []VolumeFacts{data}), want: []string{CheckFrozenFilesystem}},
		{name: "frozen in one read only: a copy's short freeze", first: ok, second: read(with(func(p *PoolFacts) { p.Frozen = 1 }), []VolumeFacts{data})},
		{name: "project IDs repaired", first: ok, second: read(with(func(p *PoolFacts) { p.ProjectIDRepairs = 3 }), []VolumeFacts{data}),
			want: []string{CheckProjectIDRepairs}},
		{name: "copy stuck", first: read(healthyPool("node-a"), []VolumeFacts{data}, cp(mib)), second: read(healthyPool("node-a"), []VolumeFacts{data}, cp(mib)),
			want: []string{CheckCopyStuck}},
		{name: "copy progressing", first: read(healthyPool("node-a"), []VolumeFacts{data}, cp(mib)), second: read(healthyPool("node-a"), []VolumeFacts{data}, cp(2*mib))},
		{name: "copy just started", first: ok, second: read(healthyPool("node-a"), []VolumeFacts{data}, cp(0))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := append([]runtime.Object{pv("pv-data", idData, "node-a", "team-a", "data", "1Gi", corev1.VolumeBound)}, tc.extraPVs...)
			if !tc.noPods {
				objs = append(objs, nodePod("berth-node-a", "node-a", corev1.PodRunning))
			}
			w := newWorld(t, objs...)
			if tc.first != "" {
				w.serve("berth-node-a", 9811, tc.first, tc.second)
			}
			out, _, err := w.run(t, "", "doctor")
			var got []string
			for _, line := range strings.Split(out, "\n") {
				if rest, ok := strings.CutPrefix(line, "[!] "); ok {
					check, _, _ := strings.Cut(rest, ":")
					got = append(got, check)
				}
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("findings %q, want %q\n%s", got, tc.want, out)
			}
			switch {
			case len(tc.want) == 0 && err != nil:
				t.Errorf("exit with %v, want success\n%s", err, out)
			case len(tc.want) > 0 && !errors.Is(err, ErrAttention):
				t.Errorf("exit with %v, want ErrAttention", err)
			}
			if len(tc.want) == 0 && !strings.Contains(out, "Nothing needs attention") {
				t.Errorf("no all-clear line:\n%s", out)
			}
		})
	}
}

// TestDoctorSharedVolumeNotMissing: a shared pool's volume (a PV of no node) is found
// on whichever driver reports it, and reported once however many do.
func TestDoctorSharedVolumeNotMissing(t *testing.T) {
	id := "b1-gluster-000000000000000000000000000000aa"
	shared := PoolFacts{Pool: "gluster", Kind: "shared", Served: true, CapacityBytes: i64(gib), UsedBytes: i64(0), FreeBytes: i64(gib)}
	vol := VolumeFacts{ID: id, Pool: "gluster", Namespace: "team-a", Claim: "shared", CapacityBytes: mib, Healthy: true}
	w := newWorld(t, nodePod("berth-node-a", "node-a", corev1.PodRunning), nodePod("berth-node-b", "node-b", corev1.PodRunning),
		driverPod("berth-controller-0", "node-b", "controller", 9812, corev1.PodRunning),
		pv("pv-shared", id, "", "team-a", "shared", "1Mi", corev1.VolumeBound))
	for _, p := range []struct {
		pod, node string
		port      int
		vols      []VolumeFacts
	}{{"berth-node-a", "node-a", 9811, nil}, {"berth-node-b", "node-b", 9811, []VolumeFacts{vol}}, {"berth-controller-0", "node-b", 9812, []VolumeFacts{vol}}} {
		s := shared
		s.Node = p.node
		e := newExposition().pool(s)
		for _, v := range p.vols {
			e.volume(v)
		}
		w.serve(p.pod, p.port, e.String())
	}
	out, _, err := w.run(t, "", "doctor")
	if err != nil {
		t.Errorf("doctor: %v\n%s", err, out)
	}
	if !strings.Contains(out, "3 pools, 1 PersistentVolumes, 1 volumes checked") {
		t.Errorf("counts:\n%s", out)
	}
	vols, _, err := w.run(t, "", "volumes")
	if err != nil || !strings.Contains(strings.Join(strings.Fields(vols), " "), "team-a/shared - gluster 1 MiB - Healthy") {
		t.Errorf("volumes: %v\n%s", err, vols)
	}
}
