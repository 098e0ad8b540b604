package crash

import (
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/berth-csi/berth/internal/testutil"
)

const (
	names   = 12 // a small set, so creates and deletes of one name interleave
	workers = 4
)

// TestCrashConsistency kills the driver with SIGKILL at random moments while
// it creates and deletes volumes, restarts it on the same pool, and checks
// that every acknowledged create and delete survived the crash and that
// start-up reconciliation left no half-built or half-deleted volume.
func TestCrashConsistency(t *testing.T) {
	testutil.RequireRoot(t)
	rounds := testutil.EnvInt(t, "BERTH_CRASH_ROUNDS", 8, 1)
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("BERTH_CRASH_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("BERTH_CRASH_SEED=%q: %v", v, err)
		}
	}
	t.Logf("seed %d (set BERTH_CRASH_SEED to repeat the choices), %d rounds", seed, rounds)
	rng := rand.New(rand.NewPCG(seed, 0))

	s := newSite(t, driverBinary(t))
	m := newModel(names)
	p := s.start(t)
	requireListVolumes(t, p)

	var acked, creates, deletes, nEarly int64
	begin := time.Now()
	for round := range rounds {
		loadFor := time.Duration(50+rng.IntN(251)) * time.Millisecond
		stats := crashUnderLoad(t, p, m, seed, round, loadFor)
		acked += stats.creates.Load() + stats.deletes.Load()
		creates, deletes = creates+stats.creates.Load(), deletes+stats.deletes.Load()
		t.Logf("round %d: killed after %v; acknowledged %d creates, %d deletes; %d calls cut off",
			round, loadFor, stats.creates.Load(), stats.deletes.Load(), stats.cutOff.Load())

		// In about one round in three, also kill the driver during its own
		// start-up reconciliation, before or just after it reports ready.
		if rng.IntN(3) == 0 {
			early := s.launch(t)
			time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond)
			early.kill()
			nEarly++
			t.Logf("round %d: also killed a driver during start-up", round)
		}

		p = s.start(t)
		verify(t, p, m, round)
		if t.Failed() {
			return // later rounds would only repeat the report
		}
	}
	t.Logf("kills: %d (under concurrent creates and deletes %d) in %v; %d more during start-up; acknowledged %d creates, %d deletes",
		rounds, rounds, time.Since(begin).Round(time.Second), nEarly, creates, deletes)
	if acked == 0 {
		t.Error("no create or delete was acknowledged in any round: the test exercised nothing")
	}
	if !p.stop(10 * time.Second) {
		t.Error("driver did not exit within 10s of SIGTERM")
	}
}

// crashUnderLoad runs the load against p for d, checks the driver has no
// child processes, and kills it with SIGKILL.
func crashUnderLoad(t *testing.T, p *proc, m *model, seed uint64, round int, d time.Duration) *roundStats {
	var killed atomic.Bool
	l := &load{t: t, ctrl: p.ctrl, m: m, killed: &killed, stats: &roundStats{}}
	stop := make(chan struct{})
	wg := l.run(t.Context(), workers, seed, round, stop)
	time.Sleep(d)

	kids, err := p.children()
	if err != nil {
		t.Fatal(err)
	}
	if len(kids) > 0 {
		t.Errorf("round %d: driver (pid %d) has child processes while serving controller calls on a dir pool: %v",
			round, p.pid(), kids)
	}
	killed.Store(true)
	close(stop)
	p.kill()
	wg.Wait()
	return l.stats
}

// verify compares what the restarted driver lists, and what its pool holds,
// with what the acknowledged calls imply; then it settles the uncertain names
// with a create and checks the listing matches the model exactly.
func verify(t *testing.T, p *proc, m *model, round int) {
	listed := listVolumes(t, p)
	known := map[string]bool{}
	nUncertain := 0
	for _, n := range m.names {
		for id := range n.ids {
			known[id] = true
		}
		switch n.state {
		case present:
			if !listed[n.id] {
				t.Errorf("round %d: volume %s (%s) was acknowledged created, but is not listed after the crash", round, n.id, n.name)
			}
			for id := range n.ids {
				if id != n.id && listed[id] {
					t.Errorf("round %d: %s's earlier volume %s, deleted before %s was created, is listed", round, n.name, id, n.id)
				}
			}
		case absent:
			for id := range n.ids {
				if listed[id] {
					t.Errorf("round %d: volume %s (%s) was acknowledged deleted, but is listed after the crash", round, id, n.name)
				}
			}
		case uncertain:
			nUncertain++
		}
	}
	var unknown []string
	for id := range listed {
		if !known[id] {
			unknown = append(unknown, id)
		}
	}
	// An unacknowledged create may have committed a volume whose ID the test
	// never saw, at most one per uncertain name.
	if len(unknown) > nUncertain {
		t.Errorf("round %d: %d listed volumes were never returned by CreateVolume (%v), but only %d names are uncertain",
			round, len(unknown), unknown, nUncertain)
	}
	checkPool(t, p.site.pool, round)

	// Settle: CreateVolume on an uncertain name returns the volume an
	// unacknowledged create committed, or makes one.
	for _, n := range m.names {
		if n.state != uncertain {
			continue
		}
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		resp, err := p.ctrl.CreateVolume(ctx, createRequest(n.name))
		cancel()
		if err != nil {
			t.Fatalf("round %d: CreateVolume %s after restart: %v", round, n.name, err)
		}
		id := resp.GetVolume().GetVolumeId()
		n.state, n.id, n.ids[id] = present, id, true
	}
	want := map[string]bool{}
	for _, n := range m.names {
		if n.state == present {
			want[n.id] = true
		}
	}
	got := listVolumes(t, p)
	for id := range want {
		if !got[id] {
			t.Errorf("round %d: volume %s is missing from ListVolumes after settling", round, id)
		}
	}
	for id := range got {
		if !want[id] {
			t.Errorf("round %d: ListVolumes has %s, which no name owns: a leaked volume", round, id)
		}
	}
	if committed := checkPool(t, p.site.pool, round); committed != len(got) {
		t.Errorf("round %d: %s/volumes holds %d committed volumes, ListVolumes lists %d", round, p.site.pool, committed, len(got))
	}
}

func requireListVolumes(t *testing.T, p *proc) {
	t.Helper()
	resp, err := p.ctrl.ControllerGetCapabilities(t.Context(), &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		t.Fatalf("ControllerGetCapabilities: %v", err)
	}
	for _, c := range resp.GetCapabilities() {
		if c.GetRpc().GetType() == csi.ControllerServiceCapability_RPC_LIST_VOLUMES {
			return
		}
	}
	t.Fatal("driver does not advertise LIST_VOLUMES, which this test reads the pool with")
}

// listVolumes pages through ListVolumes, a few entries at a time, and
// returns the IDs listed.
func listVolumes(t *testing.T, p *proc) map[string]bool {
	t.Helper()
	ids := map[string]bool{}
	token := ""
	for page := 0; ; page++ {
		if page > 10000 {
			t.Fatal("ListVolumes: next_token never ends")
		}
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		resp, err := p.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 5, StartingToken: token})
		cancel()
		if err != nil {
			t.Fatalf("ListVolumes (page %d, starting_token %q): %v", page, token, err)
		}
		if len(resp.GetEntries()) > 5 {
			t.Errorf("ListVolumes returned %d entries, max_entries was 5", len(resp.GetEntries()))
		}
		for _, e := range resp.GetEntries() {
			id := e.GetVolume().GetVolumeId()
			if id == "" {
				t.Errorf("ListVolumes entry with no volume_id: %v", e)
			}
			if ids[id] {
				t.Errorf("ListVolumes lists %s twice", id)
			}
			ids[id] = true
		}
		if token = resp.GetNextToken(); token == "" {
			return ids
		}
	}
}

// checkPool waits up to 5 s for the pool's tmp/ and trash/ to empty, then
// checks that every entry of volumes/ is a committed volume (a directory
// with record.json and data/). It returns the number of committed volumes.
func checkPool(t *testing.T, pool string, round int) int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := slices.Concat(entries(t, filepath.Join(pool, "tmp")), entries(t, filepath.Join(pool, "trash")))
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("round %d: 5s after ready, start-up has not rolled back or purged %v", round, left)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	committed := 0
	for _, v := range entries(t, filepath.Join(pool, "volumes")) {
		fi, err := os.Lstat(v)
		if err != nil {
			t.Fatal(err)
		}
		if !fi.IsDir() {
			t.Errorf("round %d: orphan in volumes/: %s is a %v, not a volume directory", round, v, fi.Mode().Type())
			continue
		}
		rec, rerr := os.Lstat(filepath.Join(v, "record.json"))
		data, derr := os.Lstat(filepath.Join(v, "data"))
		switch {
		case rerr != nil || !rec.Mode().IsRegular():
			t.Errorf("round %d: orphan in volumes/: %s has no record.json (%v)", round, v, rerr)
		case derr != nil || !data.IsDir():
			t.Errorf("round %d: volume %s has a record but no data/ directory (%v)", round, v, derr)
		default:
			committed++
		}
	}
	return committed
}

// entries lists the paths in dir; a missing dir has none.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	paths := make([]string, len(des))
	for i, de := range des {
		paths[i] = filepath.Join(dir, de.Name())
	}
	return paths
}
