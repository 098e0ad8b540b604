package crash

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/status"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage/loop"
)

// killChance is how often a call of each kind is chosen to be killed; the
// calls with several steps (stage: record, attach, mkfs, mount; expand:
// truncate, record, LOOP_SET_CAPACITY, xfs_growfs; unstage: unmount,
// detach, clear) are chosen more often than the single bind mounts.
var killChance = map[string]float64{
	opStage: 0.6, opPublish: 0.25, opExpand: 0.6, opUnpublish: 0.25, opUnstage: 0.5,
}

// TestCrashImageStaging stages, publishes, expands, unpublishes and unstages
// one xfs image volume over and over, as kubelet would, and kills the driver
// with SIGKILL at random moments, most of them inside a call. After each
// kill it restarts the driver, repeats the call that was not acknowledged
// until it succeeds, and checks that the loop devices backed by the pool
// match the volumes staged (here 0 or 1), that the volume is mounted where
// the acknowledged calls put it, that every file written and fsynced before
// a kill reads back intact, and that after an acknowledged expansion the
// device and the filesystem have the new size. No child process of a killed
// driver (mkfs, mount, xfs_growfs...) may outlive it by more than 5 s.
//
// BERTH_IMAGE_CRASH_ROUNDS sets the number of kills (default 120, about a
// minute).
func TestCrashImageStaging(t *testing.T) {
	testutil.RequireRoot(t)
	rounds := testutil.EnvInt(t, "BERTH_IMAGE_CRASH_ROUNDS", 120, 1)
	seed := crashSeed(t)
	t.Logf("seed %d (set BERTH_CRASH_SEED to repeat the choices), %d kills", seed, rounds)

	s := newImageSite(t, driverBinary(t))
	r := &stagingRun{
		t: t, s: s, rng: rand.New(rand.NewPCG(seed, 1)),
		took: map[string]time.Duration{
			opStage: 60 * time.Millisecond, opPublish: 3 * time.Millisecond, opExpand: 40 * time.Millisecond,
			opUnpublish: 3 * time.Millisecond, opUnstage: 20 * time.Millisecond,
		},
		coverage: map[string]int{},
		orphans:  map[string]int{},
	}
	r.p = s.start(t)
	r.v = createImageVolume(t, r.p, "crash-image")
	begin := time.Now()
	for cycle := 0; r.kills < rounds; cycle++ {
		if cycle > 20*rounds {
			t.Fatalf("%d cycles made only %d of %d kills", cycle, r.kills, rounds)
		}
		for _, op := range []string{opStage, opPublish, opExpand, opUnpublish, opUnstage} {
			r.step(op)
		}
		r.cycles++
	}
	r.disarm()

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := r.p.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: r.v.id}); err != nil {
		t.Errorf("DeleteVolume %s after the last unstage: %v", r.v.id, err)
	}
	if devs, err := loop.List(s.pool); err != nil || len(devs) != 0 {
		t.Errorf("after the volume was deleted the pool still backs loop devices %v (%v)", devs, err)
	}
	if !r.p.stop(10 * time.Second) {
		t.Error("driver did not exit within 10s of SIGTERM")
	}
	r.summary(time.Since(begin))
}

// stagingRun is the state of TestCrashImageStaging: the driver, the volume
// and what the acknowledged calls imply about it.
type stagingRun struct {
	t   *testing.T
	s   *site
	p   *proc
	v   *imageVolume
	rng *rand.Rand

	staged, published bool       // as the acknowledged calls left the volume
	overhead          int64      // image bytes the filesystem never reports (the xfs log), from the first staging
	files             []dataFile // written through the target and fsynced

	pending  *victim                  // an armed kill, not yet known to have fired
	took     map[string]time.Duration // moving average of each call's duration
	cycles   int
	kills    int
	early    int            // drivers also killed during start-up
	repeats  int            // repeated calls that failed again after a restart
	failures int            // calls that failed with no kill under way
	coverage map[string]int // where the kills landed
	orphans  map[string]int // children of killed drivers seen alive after the kill, by command
	linger   time.Duration  // the longest any of them took to exit
}

// victim is a driver with a kill scheduled.
type victim struct {
	timer *time.Timer
	fired atomic.Bool   // set before the signal is sent
	done  chan struct{} // closed once the driver is dead and kids is set
	kids  []procInfo    // the driver's descendants just before the kill
}

// arm schedules a SIGKILL of the current driver after d.
func (r *stagingRun) arm(d time.Duration) {
	p, v := r.p, &victim{done: make(chan struct{})}
	v.timer = time.AfterFunc(d, func() {
		v.kids = descendants(p.pid())
		v.fired.Store(true)
		p.kill()
		close(v.done)
	})
	r.pending = v
}

// disarm cancels a pending kill; one that fired meanwhile, between calls,
// is followed by a restart.
func (r *stagingRun) disarm() {
	v := r.pending
	r.pending = nil
	if v == nil || v.timer.Stop() {
		return
	}
	<-v.done
	r.kills++
	r.restart("", 0, v)
}

// step makes one call until it is acknowledged, then checks what the model
// implies.
func (r *stagingRun) step(op string) {
	size := int64(0)
	if op == opExpand {
		size = r.v.capacity + growStep
	}
	got := r.call(op, size)
	switch op {
	case opStage:
		r.staged = true
	case opPublish:
		r.published = true
	case opUnpublish:
		r.published = false
	case opUnstage:
		r.staged = false
	}
	r.checkAcknowledged(op, size, got)
}

// call makes the call, arming a kill for it now and then, and repeats it
// after each kill, as kubelet does, until it is acknowledged.
func (r *stagingRun) call(op string, size int64) int64 {
	t := r.t
	failures := 0
	for attempt := 0; ; attempt++ {
		if attempt == 0 && r.pending == nil && r.rng.Float64() < killChance[op] {
			r.arm(time.Duration(r.rng.Float64() * 1.25 * float64(r.took[op])))
		}
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		start := time.Now()
		got, err := r.v.call(ctx, r.p.node(), op, size)
		elapsed := time.Since(start)
		cancel()
		if err == nil {
			if attempt == 0 && (r.pending == nil || !r.pending.fired.Load()) {
				r.took[op] = (3*r.took[op] + elapsed) / 4
			}
			return got
		}
		if v := r.pending; v != nil && v.fired.Load() {
			<-v.done
			r.pending = nil
			r.kills++
			r.restart(op, size, v)
			continue
		}
		// A failure no kill explains. kubelet would repeat the call; so does
		// the test, a few times, but a call repeated after a restart that
		// fails is a finding, and one that fails without any crash is a bug.
		failures++
		if attempt > 0 {
			if r.repeats++; r.repeats <= 5 {
				t.Logf("%s %s, repeated after a restart, failed again (code %v): %v", op, r.v.id, status.Code(err), err)
			}
		} else if r.failures++; r.failures <= 3 {
			t.Errorf("%s %s failed with no kill under way (code %v): %v", op, r.v.id, status.Code(err), err)
		}
		if failures >= 10 {
			t.Fatalf("%s %s still fails after %d tries; volume state: %s", op, r.v.id, failures, r.describe())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// restart runs after a kill cut off op (empty when the kill came between
// two calls): it waits for the dead driver's
// children, classifies where the kill landed, restarts the driver (now and
// then killing it once more during start-up) and checks what start-up
// reconciliation left.
func (r *stagingRun) restart(op string, size int64, v *victim) {
	t, s := r.t, r.s
	var devPaths []string
	if devs, err := loop.List(s.pool); err == nil {
		for _, d := range devs {
			devPaths = append(devPaths, d.Path)
		}
	}
	suspects := v.kids
	for _, pi := range procsNaming(s.dir(), devPaths) {
		if !slices.ContainsFunc(suspects, func(k procInfo) bool { return k.pid == pi.pid }) {
			suspects = append(suspects, pi)
		}
	}
	left, took := waitGone(suspects, 5*time.Second)
	for _, pi := range suspects {
		r.orphans[filepath.Base(strings.Fields(pi.cmdline + " ?")[0])]++
	}
	r.linger = max(r.linger, took)
	if len(left) > 0 {
		t.Errorf("kill %d (in %s): children of the killed driver still run 5 s later: %v", r.kills, op, left)
	}

	before, err := r.v.state(s)
	if err != nil {
		t.Fatalf("kill %d: read state: %v", r.kills, err)
	}
	recorded := r.v.stagedRecord(s)
	where := r.classify(op, size, before, recorded)
	r.coverage[where]++
	t.Logf("kill %d: %s; %d children of the driver, last gone after %v", r.kills, where, len(suspects), took.Round(time.Millisecond))

	if r.rng.IntN(4) == 0 {
		early := s.launch(t)
		time.Sleep(time.Duration(r.rng.IntN(30)) * time.Millisecond)
		early.kill()
		r.early++
	}
	r.p = s.start(t)

	after, err := r.v.state(s)
	if err != nil {
		t.Fatalf("kill %d: read state after restart: %v", r.kills, err)
	}
	// Start-up keeps the device of a volume with a staging record and
	// detaches any other: devices always match staged volumes.
	switch {
	case len(after.devices) > 1:
		t.Errorf("kill %d (%s): after restart the pool backs %d loop devices: %v", r.kills, where, len(after.devices), after.devices)
	case recorded && before.dev != nil && after.dev == nil:
		t.Errorf("kill %d (%s): start-up detached %s, the device of a volume with a staging record", r.kills, where, before.dev.Path)
	case !recorded && after.dev != nil:
		t.Errorf("kill %d (%s): start-up kept %s, the device of a volume without a staging record", r.kills, where, after.dev.Path)
	}
	// What was acknowledged, and not since undone by the call cut off, holds.
	if r.staged && op != opUnstage && (after.dev == nil || !after.stagingMount) {
		t.Errorf("kill %d (%s): the volume was staged, but after restart device=%v staging mounted=%t", r.kills, where, after.dev, after.stagingMount)
	}
	if !r.staged && op != opStage && len(after.devices) != 0 {
		t.Errorf("kill %d (%s): the volume was unstaged, but the pool backs %v", r.kills, where, after.devices)
	}
	if r.published && op != opUnpublish {
		if !after.targetMount {
			t.Errorf("kill %d (%s): the volume was published, but %s is not mounted after restart", r.kills, where, r.v.target)
		} else if err := checkFiles(r.v.target, r.files); err != nil {
			t.Errorf("kill %d (%s): files written and fsynced before the kill: %v", r.kills, where, err)
		}
	}
}

// classify names the point a kill cut off op at, from the state it left.
func (r *stagingRun) classify(op string, size int64, k *kernelState, recorded bool) string {
	switch op {
	case opStage:
		switch {
		case k.dev == nil && !recorded:
			return "stage: nothing done"
		case k.dev == nil:
			return "stage: recorded, not attached"
		case !recorded:
			return "stage: attached without a staging record"
		case !k.stagingMount:
			return "stage: attached, not mounted"
		}
		return "stage: mounted"
	case opExpand:
		capacity, _ := r.v.recordCapacity(r.s)
		switch {
		case k.imageBytes < size:
			return "expand: image not grown"
		case capacity < size:
			return "expand: image grown, record not"
		case k.deviceBytes < size:
			return "expand: recorded, device not refreshed"
		case k.stagingFSSize+r.overhead < size:
			return "expand: device refreshed, filesystem not grown"
		}
		return "expand: filesystem grown"
	case opUnstage:
		switch {
		case k.stagingMount:
			return "unstage: still mounted"
		case k.dev != nil:
			return "unstage: unmounted, still attached"
		case recorded:
			return "unstage: detached, record not cleared"
		}
		return "unstage: done"
	case "":
		return "no call in flight"
	case opPublish, opUnpublish:
		call := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(op, "Node"), "Volume"))
		if k.targetMount {
			return call + ": target mounted"
		}
		return call + ": target not mounted"
	}
	return op
}

// checkAcknowledged checks the state an acknowledged call leaves.
func (r *stagingRun) checkAcknowledged(op string, size, got int64) {
	t, v := r.t, r.v
	k, err := v.state(r.s)
	if err != nil {
		t.Fatalf("after %s: %v", op, err)
	}
	want := 0
	if r.staged {
		want = 1
	}
	if len(k.devices) != want {
		t.Errorf("after %s: the pool backs %d loop devices %v, want %d (volumes staged)", op, len(k.devices), k.devices, want)
	}
	if r.staged && !k.stagingMount {
		t.Errorf("after %s: the volume is staged, but %s is not a mount of its device", op, v.staging)
	}
	if r.published != k.targetMount {
		t.Errorf("after %s: published=%t, but the target mounted=%t", op, r.published, k.targetMount)
	}
	if !r.staged && (v.stagedRecord(r.s) || isMountPoint(v.staging)) {
		t.Errorf("after %s: the volume is unstaged, but its staging record or mount remains", op)
	}
	switch op {
	case opStage:
		if r.overhead == 0 {
			r.overhead = v.capacity - k.stagingFSSize
			t.Logf("xfs on %d MiB reports %d MiB: %d MiB of log and metadata", v.capacity>>20, k.stagingFSSize>>20, r.overhead>>20)
		}
		if k.stagingFSSize+r.overhead < v.capacity {
			t.Errorf("after %s: the filesystem reports %d bytes (+%d overhead), the volume has %d", op, k.stagingFSSize, r.overhead, v.capacity)
		}
	case opPublish:
		if err := checkFiles(v.target, r.files); err != nil {
			t.Errorf("after %s (cycle %d): files written and fsynced earlier: %v", op, r.cycles, err)
		}
		data := make([]byte, 64<<10)
		for i := range data {
			data[i] = byte(r.rng.Uint32())
		}
		f, err := writeDurable(v.target, fmt.Sprintf("cycle-%04d", r.cycles), data)
		if err != nil {
			t.Errorf("after %s: write and read back through %s: %v", op, v.target, err)
		} else {
			r.files = append(r.files, f)
		}
	case opExpand:
		recorded, err := v.recordCapacity(r.s)
		if err != nil {
			t.Fatal(err)
		}
		fs, err := fsBytes(v.target)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case got < size:
			t.Errorf("NodeExpandVolume to %d answered capacity %d", size, got)
		case recorded != got:
			t.Errorf("NodeExpandVolume answered %d, the record says %d", got, recorded)
		case k.deviceBytes < got:
			t.Errorf("after NodeExpandVolume to %d the device has %d bytes", got, k.deviceBytes)
		case fs+r.overhead < got:
			t.Errorf("after NodeExpandVolume to %d statfs at the target reports %d bytes (+%d overhead)", got, fs, r.overhead)
		}
		v.capacity = got
	}
}

// describe is the volume's state, for a failure message.
func (r *stagingRun) describe() string {
	k, err := r.v.state(r.s)
	if err != nil {
		return err.Error()
	}
	capacity, _ := r.v.recordCapacity(r.s)
	return fmt.Sprintf("staged=%t published=%t record=%t devices=%v stagingMount=%t targetMount=%t image=%d record=%d device=%d fs=%d",
		r.staged, r.published, r.v.stagedRecord(r.s), k.devices, k.stagingMount, k.targetMount,
		k.imageBytes, capacity, k.deviceBytes, k.stagingFSSize)
}

func (r *stagingRun) summary(elapsed time.Duration) {
	t := r.t
	t.Logf("%d cycles, %d kills (%d more during start-up) in %v; volume grew to %d MiB; %d files checked",
		r.cycles, r.kills, r.early, elapsed.Round(time.Second), r.v.capacity>>20, len(r.files))
	if r.repeats > 0 || r.failures > 0 {
		t.Logf("%d calls repeated after a restart failed again before succeeding; %d calls failed with no kill under way", r.repeats, r.failures)
	}
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(r.coverage)) {
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", k, r.coverage[k])
	}
	t.Logf("kills: %d (%s)", r.kills, b.String())
	b.Reset()
	for _, k := range slices.Sorted(maps.Keys(r.coverage)) {
		fmt.Fprintf(&b, "\n  %3d  %s", r.coverage[k], k)
	}
	t.Logf("where the kills landed:%s", b.String())
	if len(r.orphans) == 0 {
		t.Logf("no killed driver left a child process")
		return
	}
	b.Reset()
	for _, k := range slices.Sorted(maps.Keys(r.orphans)) {
		fmt.Fprintf(&b, " %s×%d", k, r.orphans[k])
	}
	t.Logf("children alive at a kill:%s; the last exited %v after its driver", b.String(), r.linger.Round(time.Millisecond))
}

// crashSeed is $BERTH_CRASH_SEED, or the clock.
func crashSeed(t *testing.T) uint64 {
	t.Helper()
	v := os.Getenv("BERTH_CRASH_SEED")
	if v == "" {
		return uint64(time.Now().UnixNano())
	}
	seed, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		t.Fatalf("BERTH_CRASH_SEED=%q: %v", v, err)
	}
	return seed
}
