package storage_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/podfreeze"
)

// groupWriterEnv makes this test binary an invariant writer (TestMain): it writes
// a counter to each file the variable lists (separated by ':'), one after the other,
// forever, once a line arrives on its standard input.
const groupWriterEnv = "BERTH_GROUP_WRITER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(groupWriterEnv); spec != "" {
		os.Exit(groupWriter(strings.Split(spec, ":")))
	}
	os.Exit(m.Run())
}

func groupWriter(paths []string) int {
	var files []*os.File
	for _, p := range paths {
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		files = append(files, f)
	}
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return 0
	}
	for n := int64(1); ; n++ {
		for _, f := range files {
			if _, err := f.WriteAt(counterBytes(n), 0); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
		}
	}
}

// startWriter starts the invariant writer on paths (initialised to 0) as a process
// of the pod whose container cgroup is given, and kills it at cleanup.
func startWriter(t *testing.T, cg *testutil.Cgroups, container string, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if err := os.WriteFile(p, counterBytes(0), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), groupWriterEnv+"="+strings.Join(paths, ":"))
	cmd.Stderr = os.Stderr
	cg.Start(t, container, cmd)
}

// pausedPod is a pod's cgroups made for a test, laid out as kubelet's, in the
// hierarchy version of the machine's, and a site whose engine pauses pods there.
type pausedPod struct {
	cg        *testutil.Cgroups
	container string // the cgroup of the pod's container, for its processes
	pod       string // the pod's cgroup
}

const writerPod = "0f2c6a1e-4b7d-4e55-9a3c-2d1f0e8b7c6a"

// newPausableSite starts a site on pools whose engine pauses the pods of a test
// cgroup hierarchy of version.
func newPausableSite(t *testing.T, version string, pools ...storage.PoolConfig) (*groupSite, *pausedPod) {
	t.Helper()
	cg := testutil.MakeCgroups(t, version)
	container := cg.Pod(t, writerPod)
	host := storage.RealHost()
	host.Pods = podfreeze.New(cg.Root)
	return newGroupSite(t, host, pools...), &pausedPod{cg: cg, container: container, pod: filepath.Dir(container)}
}

// waitCounter waits (bounded) until the counter at path has passed last.
func waitCounter(t *testing.T, path string, last int64) int64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if n := readCounter(t, path); n > last+10 {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("the writer is stuck at %d (its pod left paused?)", readCounter(t, path))
		}
		time.Sleep(time.Millisecond)
	}
}

// TestGroupSnapshotDirWriterInvariant takes groups of two dir volumes on an XFS with
// reflinks again and again while a process of the pod that publishes both keeps an
// invariant across them (a counter written to one, then the other). The pod is
// paused (its cgroup frozen) for each group's instant: every pair of members holds
// a consistent pair, and the writer runs on between groups. Snapshots of the same
// volumes taken one after the other, the control, break the invariant: the check
// can fail. In each cgroup hierarchy the machine has.
func TestGroupSnapshotDirWriterInvariant(t *testing.T) {
	for _, version := range testutil.RequireCgroupVersions(t) {
		t.Run(version, func(t *testing.T) { dirWriterInvariant(t, version) })
	}
}

func dirWriterInvariant(t *testing.T, version string) {
	s, pod := newPausableSite(t, version, loopPool(t, testutil.XFSPlain, storage.KindDir))
	p := s.pool("default")
	a := s.create("default", "pvc-a", "", 16*mib)
	b := s.create("default", "pvc-b", "", 16*mib)
	ta, tb := s.publish(a, writerPod), s.publish(b, writerPod)
	startWriter(t, pod.cg, pod.container, filepath.Join(ta, "counter"), filepath.Join(tb, "counter"))
	counterA := filepath.Join(p.DataPath(a.Hash()), "counter")
	member := func(snap *storage.Snapshot) int64 {
		return readCounter(t, filepath.Join(p.Config().Path, "snapshots", snap.Hash(), storage.DataDir, "counter"))
	}

	rounds := testutil.EnvInt(t, "BERTH_GROUP_ROUNDS", 20, 1)
	var last int64
	var g *storage.GroupSnapshot
	for i := range rounds {
		last = waitCounter(t, counterA, last)
		var log groupLog
		var err error
		if g, err = s.group(log.ctx(), fmt.Sprintf("round-%d", i), a, b); err != nil {
			t.Fatal(err)
		}
		if len(log.find("Group snapshot writers paused", `"pods"=1`)) != 1 {
			t.Fatalf("round %d: the pod was not paused once:\n%s", i, &log)
		}
		checkPair(t, g.ID, member(memberOf(t, g, a)), member(memberOf(t, g, b)))
	}
	// The last pair, restored as volumes, holds the members' bytes.
	ra, rb := s.restore("restored-a", memberOf(t, g, a)), s.restore("restored-b", memberOf(t, g, b))
	checkPair(t, "restored", readCounter(t, filepath.Join(p.DataPath(ra.Hash()), "counter")),
		readCounter(t, filepath.Join(p.DataPath(rb.Hash()), "counter")))
	if got, want := readCounter(t, filepath.Join(p.DataPath(ra.Hash()), "counter")), member(memberOf(t, g, a)); got != want {
		t.Errorf("restored counter %d, member's %d", got, want)
	}
	waitCounter(t, counterA, last) // resumed

	// The control: one snapshot after the other, no pause.
	broken := 0
	for i := range 10 {
		sa := snapshotReady(t, p, fmt.Sprintf("control-%d-a", i), a.Hash())
		sb := snapshotReady(t, p, fmt.Sprintf("control-%d-b", i), b.Hash())
		if va, vb := member(sa), member(sb); va != vb && va != vb+1 {
			broken++
		}
	}
	if broken == 0 {
		t.Error("10 pairs of snapshots taken one after the other all kept the invariant: the check cannot tell a group from separate snapshots")
	}
	t.Logf("%d groups consistent; %d of 10 pairs of separate snapshots inconsistent", rounds, broken)
}

// TestGroupSnapshotPauseCancelled: a group that cannot finish while its writers are
// paused (here its context is over before it starts) leaves the pod running and
// nothing behind.
func TestGroupSnapshotPauseCancelled(t *testing.T) {
	s, pod := newPausableSite(t, testutil.RequireCgroupVersions(t)[0], loopPool(t, testutil.XFSPlain, storage.KindDir))
	a := s.create("default", "pvc-a", "", 16*mib)
	ta := s.publish(a, writerPod)
	startWriter(t, pod.cg, pod.container, filepath.Join(ta, "counter"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.group(ctx, "cancelled", a); err == nil {
		t.Fatal("a group whose pause was cancelled succeeded")
	} else {
		t.Log(err)
	}
	if frozen, err := podfreeze.New(pod.cg.Root).Frozen(pod.pod); err != nil || frozen {
		t.Fatalf("pod frozen after a cancelled group: %v, %v", frozen, err)
	}
	waitCounter(t, filepath.Join(s.pool("default").DataPath(a.Hash()), "counter"), 0)
	for _, d := range []string{"snapshots", "groups"} {
		if entries, _ := os.ReadDir(filepath.Join(s.pool("default").Config().Path, d)); len(entries) != 0 {
			t.Errorf("%s/ holds %d entries after a cancelled group, want none", d, len(entries))
		}
	}
}

// TestGroupSnapshotBlockWriterInvariant: two raw block image volumes written through
// their devices (buffered, in the devices' page cache) by a process of the pod that
// publishes both, groups taken again and again: the pod is paused, the devices
// flushed into their images, and every pair of members holds a consistent pair.
func TestGroupSnapshotBlockWriterInvariant(t *testing.T) {
	mnt := testutil.MountFS(t, testutil.XFSPlain, 1<<30)
	s, pod := newPausableSite(t, testutil.RequireCgroupVersions(t)[0], storage.PoolConfig{Name: "img", Path: filepath.Join(mnt, "img"), Kind: storage.KindImage})
	p := s.pool("img")
	var vols []*storage.Record
	var devices []string
	for _, name := range []string{"pvc-a", "pvc-b"} {
		r, err := p.Create(context.Background(), storage.CreateRequest{Name: name, RequiredBytes: 16 * mib, AccessType: storage.AccessBlock})
		if err != nil {
			t.Fatal(err)
		}
		vols = append(vols, r)
		devices = append(devices, s.publish(r, writerPod))
	}
	startWriter(t, pod.cg, pod.container, devices...)
	member := func(snap *storage.Snapshot) int64 {
		return readCounter(t, filepath.Join(p.Config().Path, "snapshots", snap.Hash(), storage.ImageFile))
	}
	rounds := testutil.EnvInt(t, "BERTH_GROUP_ROUNDS", 10, 1)
	var g *storage.GroupSnapshot
	var last int64
	for i := range rounds {
		last = waitCounter(t, devices[0], last) // read through the device's page cache
		var log groupLog
		var err error
		if g, err = s.group(log.ctx(), fmt.Sprintf("round-%d", i), vols...); err != nil {
			t.Fatal(err)
		}
		if len(log.find("Group snapshot writers paused", `"pods"=1`, `"devices"=2`)) != 1 {
			t.Fatalf("round %d: want the pod paused and 2 devices flushed:\n%s", i, &log)
		}
		a, b := member(memberOf(t, g, vols[0])), member(memberOf(t, g, vols[1]))
		checkPair(t, g.ID, a, b)
		if a < last {
			t.Errorf("round %d: the member holds %d, the device showed %d before: the devices were not flushed", i, a, last)
		}
	}
	r, err := p.Create(context.Background(), storage.CreateRequest{Name: "restored", RequiredBytes: 16 * mib, AccessType: storage.AccessBlock,
		Source: &storage.Source{Kind: storage.SourceSnapshot, ID: memberOf(t, g, vols[0]).ID}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := readCounter(t, p.ImagePath(r.Hash())), member(memberOf(t, g, vols[0])); got != want {
		t.Errorf("restored volume holds %d, its snapshot %d", got, want)
	}
}
