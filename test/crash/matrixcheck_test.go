package crash

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/mounter"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/loop"
)

// checkMatrix's invariants, after a restart (unsure names what the call the
// kill cut off may or may not have done) or at the end (unsure is empty):
//
//   - every volume and snapshot the model holds is listed, and nothing else:
//     none lost, none resurrected, none leaked;
//   - start-up empties tmp/ and trash/, and every entry of volumes/ and
//     snapshots/ is committed, with a record naming what is listed;
//   - the capacities ListVolumes and ListSnapshots report add up to a recount
//     of the records, and GetCapacity of the non-overcommitted pool is its
//     size less that recount (when the free space does not decide it);
//   - under the kubelet directory, exactly the model's publications are
//     mounted, each showing its own volume's data (a file written through the
//     target when it was published reads back the volume's ID);
//   - no loop device is backed by a pool;
//   - a write through every publication completes: nothing is frozen.
func (r *matrixRun) check(when string, unsure []string) {
	t := r.t
	t.Helper()
	r.checks++
	maybe := map[string]bool{}
	for _, u := range unsure {
		maybe[u] = true
	}

	wantVols := map[string]bool{}
	for _, v := range r.vols {
		if v.present {
			wantVols[v.id] = true
		}
	}
	for _, l := range r.links {
		if l.kind == "ephemeral" && l.published {
			wantVols[l.volID] = true
		}
	}
	wantSnaps := map[string]bool{}
	for _, sn := range r.snaps {
		if sn.present {
			wantSnaps[sn.id] = true
		}
	}
	vols, snaps := r.listAll()
	r.compare(when, "volume", wantVols, vols, maybe)
	r.compare(when, "snapshot", wantSnaps, snaps, maybe)

	for _, pool := range []struct{ name, path string }{{copyPool, r.s.pool}, {reflinkPool, r.fast}} {
		checkPool(t, pool.path, r.checks) // tmp/ and trash/ emptied; volumes/ entries committed
		recVols := readRecords(t, filepath.Join(pool.path, "volumes"), func(b []byte) (string, int64) {
			var rec storage.Record
			_ = json.Unmarshal(b, &rec)
			return rec.ID, rec.CapacityBytes
		})
		recSnaps := readRecords(t, filepath.Join(pool.path, "snapshots"), func(b []byte) (string, int64) {
			var rec storage.Snapshot
			_ = json.Unmarshal(b, &rec)
			return rec.ID, rec.SizeBytes
		})
		var recount, listed int64
		for _, set := range []struct {
			kind   string
			disk   map[string]int64
			listed map[string]int64
			parse  func(string) (storage.ParsedID, error)
		}{
			{"volume", recVols, vols, storage.ParseVolumeID},
			{"snapshot", recSnaps, snaps, storage.ParseSnapshotID},
		} {
			for id, n := range set.disk {
				recount += n
				if _, ok := set.listed[id]; !ok {
					t.Errorf("%s: %s/%ss holds a committed %s %s that is not listed", when, pool.path, set.kind, set.kind, id)
				}
			}
			for id, n := range set.listed {
				if pid, err := set.parse(id); err != nil || pid.Pool != pool.name {
					continue
				}
				listed += n
				if _, ok := set.disk[id]; !ok {
					t.Errorf("%s: %s %s is listed but pool %s has no record of it", when, set.kind, id, pool.name)
				}
			}
		}
		if listed != recount {
			t.Errorf("%s: pool %s lists %d bytes of volumes and snapshots, its records add up to %d", when, pool.name, listed, recount)
		}
		if pool.name == reflinkPool {
			r.checkCapacity(when, pool.path, recount)
		}
		if devs, err := loop.List(pool.path); err != nil || len(devs) != 0 {
			t.Errorf("%s: loop devices backed by pool %s, which has no image: %v (%v)", when, pool.name, devs, err)
		}
	}
	r.checkMounts(when, maybe)
}

// listAll pages through ListVolumes and ListSnapshots and returns their
// capacities and sizes by ID.
func (r *matrixRun) listAll() (vols, snaps map[string]int64) {
	t := r.t
	vols, snaps = map[string]int64{}, map[string]int64{}
	for token, page := "", 0; ; page++ {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		resp, err := r.p.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 4, StartingToken: token})
		cancel()
		if err != nil || page > 1000 {
			t.Fatalf("ListVolumes (page %d): %v", page, err)
		}
		for _, e := range resp.GetEntries() {
			vols[e.GetVolume().GetVolumeId()] = e.GetVolume().GetCapacityBytes()
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
	}
	for token, page := "", 0; ; page++ {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		resp, err := r.p.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: 4, StartingToken: token})
		cancel()
		if err != nil || page > 1000 {
			t.Fatalf("ListSnapshots (page %d): %v", page, err)
		}
		for _, e := range resp.GetEntries() {
			snaps[e.GetSnapshot().GetSnapshotId()] = e.GetSnapshot().GetSizeBytes()
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
	}
	return vols, snaps
}

// compare reports what the model holds but is not listed (lost) and what is
// listed but the model does not hold (resurrected or leaked), sparing the IDs
// the cut-off call touched.
func (r *matrixRun) compare(when, kind string, want map[string]bool, listed map[string]int64, maybe map[string]bool) {
	for id := range want {
		if _, ok := listed[id]; !ok && !maybe[id] {
			r.t.Errorf("%s: acknowledged %s %s is not listed: lost", when, kind, id)
		}
	}
	for id := range listed {
		if !want[id] && !maybe[id] {
			r.t.Errorf("%s: %s %s is listed, but no acknowledged call left it there: resurrected or leaked", when, kind, id)
		}
	}
}

// readRecords reads <dir>/*/record.json and returns each record's ID and size.
func readRecords(t interface{ Errorf(string, ...any) }, dir string, parse func([]byte) (string, int64)) map[string]int64 {
	out := map[string]int64{}
	des, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Errorf("read %s: %v", dir, err)
	}
	for _, de := range des {
		b, err := os.ReadFile(filepath.Join(dir, de.Name(), "record.json"))
		if err != nil {
			t.Errorf("orphan in %s: %s has no readable record: %v", dir, de.Name(), err)
			continue
		}
		id, n := parse(b)
		out[id] = n
	}
	return out
}

// checkCapacity compares GetCapacity of the non-overcommitted pool at path
// with its filesystem's size less the recount: available = min(free, size - recount).
// When free space decides the answer, it can only be checked to lie within
// the free space seen around the call.
func (r *matrixRun) checkCapacity(when, path string, recount int64) {
	t := r.t
	var size int64 // the filesystem's size: the pool reserves nothing
	free := func() int64 {
		var st unix.Statfs_t
		if err := unix.Statfs(path, &st); err != nil {
			t.Fatal(err)
		}
		size = int64(st.Blocks) * st.Bsize
		return int64(st.Bavail) * st.Bsize
	}
	before := free()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	resp, err := r.p.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"pool": reflinkPool}})
	cancel()
	after := free()
	if err != nil {
		t.Fatalf("%s: GetCapacity: %v", when, err)
	}
	avail := resp.GetAvailableCapacity()
	lo, hi := min(before, after), max(before, after)
	switch want := size - recount; {
	case want < lo:
		r.seen++
		if avail != want {
			t.Errorf("%s: GetCapacity of pool %s is %d; its size %d less the %d bytes its records promise is %d",
				when, reflinkPool, avail, size, recount, want)
		}
	case avail < min(lo, want) || avail > hi:
		t.Errorf("%s: GetCapacity of pool %s is %d; free space was %d..%d, size less records %d", when, reflinkPool, avail, lo, hi, want)
	}
}

// checkMounts compares the mounts under the kubelet directory with the
// model's publications and writes through each one.
func (r *matrixRun) checkMounts(when string, maybe map[string]bool) {
	t := r.t
	want := map[string]string{} // target -> the ID its .owner file names
	for _, v := range r.vols {
		if v.target != "" {
			want[v.target] = v.id
		}
	}
	for _, l := range r.links {
		if l.published {
			want[l.target] = l.id
		}
	}
	ms, err := mounter.All()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, m := range ms {
		if !strings.HasPrefix(m.Mountpoint, r.s.kubelet+"/") {
			continue
		}
		seen[m.Mountpoint]++
		if _, ok := want[m.Mountpoint]; !ok && !maybe[m.Mountpoint] {
			t.Errorf("%s: stray mount at %s (of %s), which no acknowledged call left", when, m.Mountpoint, m.Root)
		}
	}
	for _, target := range slices.Sorted(func(yield func(string) bool) {
		for k := range want {
			if !yield(k) {
				return
			}
		}
	}) {
		id := want[target]
		switch {
		case seen[target] == 0:
			if !maybe[target] {
				t.Errorf("%s: %s, acknowledged published at %s, is not mounted there", when, id, target)
			}
			continue
		case maybe[target]:
			continue // the cut-off call may have unmounted, and may not yet have removed, the target
		case seen[target] > 1:
			t.Errorf("%s: %d mounts stacked at %s", when, seen[target], target)
		}
		if got, err := os.ReadFile(filepath.Join(target, ".owner")); err != nil || string(got) != id {
			t.Errorf("%s: %s shows the data of %q (%v), not of %s", when, target, got, err, id)
		}
		done := make(chan error, 1)
		go func() { done <- writeSync(filepath.Join(target, "probe"), []byte(when)) }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: write through %s: %v", when, target, err)
			}
		case <-time.After(10 * time.Second):
			testutil.ThawFS(target)
			t.Errorf("%s: a write through %s hangs: its filesystem is frozen", when, target)
		}
	}
}
