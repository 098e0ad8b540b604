package storage_test

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
)

// imageGroupSite is a site with an image pool and a dir pool on one XFS with
// reflinks: a group may take volumes of both.
func imageGroupSite(t *testing.T) *groupSite {
	t.Helper()
	mnt := testutil.MountFS(t, testutil.XFSPlain, 4<<30)
	return newGroupSite(t, storage.Host{},
		storage.PoolConfig{Name: "img", Path: filepath.Join(mnt, "img"), Kind: storage.KindImage},
		storage.PoolConfig{Name: "dir", Path: filepath.Join(mnt, "dir"), Kind: storage.KindDir})
}

// TestGroupSnapshotImageVolumesFrozenTogether takes two published image volumes and a
// dir volume in one group: both images' filesystems are frozen once, together, before
// the first member is taken, and thawed after the last; the pods' writes go on after;
// each member restores as a volume with its source's bytes.
func TestGroupSnapshotImageVolumesFrozenTogether(t *testing.T) {
	s := imageGroupSite(t)
	a := s.create("img", "pvc-a", "ext4", 64*mib)
	b := s.create("img", "pvc-b", "ext4", 64*mib)
	d := s.create("dir", "pvc-d", "", 16*mib)
	const pod = "6b0e4b3b-d5a2-4a5f-83c1-e7d9f0a1b2c3"
	ta, tb := s.publish(a, pod), s.publish(b, pod)
	writeFile(t, filepath.Join(ta, "a.txt"), "image a")
	writeFile(t, filepath.Join(tb, "b.txt"), "image b")
	writeFile(t, filepath.Join(s.pool("dir").DataPath(d.Hash()), "d.txt"), "dir d")

	var log groupLog
	g, err := s.group(log.ctx(), "together", a, b, d)
	if err != nil {
		t.Fatal(err)
	}
	if g.Pool != "dir" { // the pool of the first source ID in order: b1-dir-... < b1-img-...
		t.Errorf("group's home pool %s, want dir", g.Pool)
	}
	captured := log.find("Group snapshot member captured")
	if len(captured) != 3 {
		t.Fatalf("%d members captured, want 3:\n%s", len(captured), &log)
	}
	for _, v := range []*storage.Record{a, b} {
		frozen := log.find("Filesystem frozen for a copy", v.ID)
		thawed := log.find("Filesystem thawed", v.ID)
		if len(frozen) != 1 || len(thawed) != 1 {
			t.Fatalf("volume %s frozen %d times and thawed %d times, want once each:\n%s", v.ID, len(frozen), len(thawed), &log)
		}
		if frozen[0] > slices.Min(captured) || thawed[0] < slices.Max(captured) {
			t.Errorf("volume %s frozen at line %d and thawed at %d, members taken at %v: the freeze must hold every member's capture:\n%s",
				v.ID, frozen[0], thawed[0], captured, &log)
		}
	}
	if paused := log.find("Group snapshot writers paused", `"filesystems"=2`, `"pods"=0`); len(paused) != 1 {
		t.Errorf("want one pause of 2 filesystems and no pod:\n%s", &log)
	}
	// The image members' anchors (snapshotanchor.go) are made once the writers
	// run again: they are not part of the instant.
	resumed := log.find("Group snapshot writers resumed")
	for _, v := range []*storage.Record{a, b} {
		m := memberOf(t, g, v)
		if !anchored(t, s.pool("img"), m) {
			t.Errorf("member %s has no anchor", m.ID)
		}
		if at := log.find("Snapshot image anchored", m.ID); len(at) != 1 || len(resumed) != 1 || at[0] < resumed[0] {
			t.Errorf("member %s anchored at lines %v, writers resumed at %v: want one anchor, after:\n%s", m.ID, at, resumed, &log)
		}
	}
	if anchored(t, s.pool("dir"), memberOf(t, g, d)) {
		t.Error("the dir member has an anchor")
	}
	// Thawed: the pod writes on.
	writeFile(t, filepath.Join(ta, "after.txt"), "written after the group")

	const restorePod = "8c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
	for v, want := range map[*storage.Record]string{a: "image a", b: "image b"} {
		r := s.restore("restored-"+v.Name, memberOf(t, g, v))
		target := s.publish(r, restorePod)
		name := map[*storage.Record]string{a: "a.txt", b: "b.txt"}[v]
		assertContent(t, filepath.Join(target, name), want)
		assertMissing(t, filepath.Join(target, "after.txt"))
	}
	rd := s.restore("restored-d", memberOf(t, g, d))
	assertContent(t, filepath.Join(s.pool("dir").DataPath(rd.Hash()), "d.txt"), "dir d")
}

// counterWidth is the fixed width of the counters the invariant writers write, so
// every write replaces the whole previous value in one write(2).
const counterWidth = 21

func counterBytes(n int64) []byte { return []byte(fmt.Sprintf("%020d\n", n)) }

// readCounter reads the counter at the start of a file, image or device.
func readCounter(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := make([]byte, counterWidth)
	if _, err := io.ReadFull(f, data); err != nil {
		t.Fatalf("read the counter of %s: %v", path, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		t.Fatalf("counter %s holds %q: %v", path, data, err)
	}
	return n
}

// checkPair checks the writers' invariant on the counters of a and b: each value is
// written to a, then to b, so a consistent pair has a == b or a == b+1.
func checkPair(t *testing.T, what string, a, b int64) {
	t.Helper()
	if a != b && a != b+1 {
		t.Errorf("%s: counters a=%d b=%d break the invariant (a == b or a == b+1): not taken at one instant", what, a, b)
	}
}

// TestGroupSnapshotImageWriterInvariant takes groups of two published image volumes
// again and again while a writer keeps an invariant across them (a counter written
// to one, then the other); every pair of members, restored as volumes, satisfies it.
func TestGroupSnapshotImageWriterInvariant(t *testing.T) {
	s := imageGroupSite(t)
	a := s.create("img", "pvc-a", "ext4", 64*mib)
	b := s.create("img", "pvc-b", "ext4", 64*mib)
	const pod = "6b0e4b3b-d5a2-4a5f-83c1-e7d9f0a1b2c3"
	paths := []string{filepath.Join(s.publish(a, pod), "counter"), filepath.Join(s.publish(b, pod), "counter")}
	var files []*os.File
	for _, p := range paths {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(counterBytes(0), 0); err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files = append(files, f)
	}
	var written atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := int64(1); ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			for _, f := range files {
				if _, err := f.WriteAt(counterBytes(n), 0); err != nil {
					t.Error(err)
					return
				}
			}
			written.Store(n)
		}
	}()
	defer wg.Wait()
	defer close(stop)

	rounds := testutil.EnvInt(t, "BERTH_GROUP_ROUNDS", 5, 1)
	const restorePod = "8c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
	var last int64
	for i := range rounds {
		waitAdvance(t, &written, last)
		g := s.mustGroup(fmt.Sprintf("round-%d", i), a, b)
		var got [2]int64
		for j, v := range []*storage.Record{a, b} {
			r := s.restore(fmt.Sprintf("round-%d-%s", i, v.Name), memberOf(t, g, v))
			got[j] = readCounter(t, filepath.Join(s.publish(r, restorePod), "counter"))
		}
		checkPair(t, g.ID, got[0], got[1])
		if got[0] < last {
			t.Errorf("round %d: counter %d went back from %d", i, got[0], last)
		}
		last = got[0]
		t.Logf("round %d: a=%d b=%d", i, got[0], got[1])
	}
}

// waitAdvance waits (bounded) until the writer has written past last.
func waitAdvance(t *testing.T, written *atomic.Int64, last int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for written.Load() <= last+10 {
		if time.Now().After(deadline) {
			t.Fatalf("the writer is stuck at %d (a filesystem left frozen, a pod left paused?)", written.Load())
		}
		time.Sleep(time.Millisecond)
	}
}
