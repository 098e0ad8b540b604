package crash

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
)

// The pools of the matrix site: "default", a dir pool on the test's own
// filesystem (no reflinks: snapshots, restores and clones copy), and "fast", a
// dir pool on an xfs with reflinks (they clone extents), which is not
// overcommitted so that GetCapacity shows its accounting.
const (
	copyPool    = "default"
	reflinkPool = "fast"
	// matrixSize is the capacity of every volume; the fast pool's filesystem
	// holds all its volumes and snapshots at once.
	matrixSize  = 32 << 20
	reflinkFS   = 1 << 30
	matrixNames = 5 // volume and snapshot names per pool
)

// mvol is one volume name and what the acknowledged calls left of it.
type mvol struct {
	name, pool, id, hash string
	present              bool
	staged               bool
	target               string // where it is published; "" when it is not
}

// msnap is one snapshot name.
type msnap struct {
	name, pool, id, hash string
	present              bool
}

// mlink is an ephemeral inline volume or an adopted directory, published
// (or not) at one target.
type mlink struct {
	kind      string // "ephemeral" or "adopted"
	id        string // the volume ID kubelet sends
	volID     string // ephemeral: the Berth volume behind it
	dir       string // adopted: the host directory
	target    string
	published bool
}

// matrixRun is the state of TestCrashMatrix.
type matrixRun struct {
	t    *testing.T
	s    *site
	p    *proc
	rng  *rand.Rand
	root string // the adopt root
	fast string // the reflink pool's path

	vols  []*mvol
	snaps []*msnap
	links []*mlink

	pending *victim
	took    map[string]time.Duration // moving average of each call's duration
	acks    map[string]int           // acknowledged calls, by operation
	kills   map[string]int           // kills inside a call, by operation
	total   int
	early   int // drivers also killed during start-up
	aborted int // Aborted answers (a copy still running), retried
	checks  int
	seen    int // GetCapacity checks where the accounting decided the answer
}

// TestCrashMatrix kills the driver with SIGKILL inside every kind of mutating
// call a dir pool serves: create, delete, snapshot, snapshot deletion,
// restore and clone (each on a copying pool and on a reflinking one), stage,
// unstage, publish, unpublish, ephemeral inline publish and unpublish, and
// publish and unpublish of an adopted directory. The calls run one at a time,
// as the sidecars and kubelet make them, and the one a kill cut off is repeated
// after the restart until it is acknowledged. After each restart the
// invariants of checkMatrix hold: no acknowledged volume or snapshot lost or
// resurrected, no orphan in tmp/, trash/, volumes/ or snapshots/, no stray
// mount or loop device, no frozen filesystem, and the pools' accounting equal
// to a recount of their records. (Controller expansion does not exist: Berth's
// expansion is node-only, and TestCrashImageStaging kills NodeExpandVolume.)
//
// BERTH_MATRIX_KILLS sets the number of kills (default 40).
func TestCrashMatrix(t *testing.T) {
	testutil.RequireRoot(t)
	kills := testutil.EnvInt(t, "BERTH_MATRIX_KILLS", 40, 1)
	seed := crashSeed(t)
	t.Logf("seed %d (set BERTH_CRASH_SEED to repeat the choices), %d kills", seed, kills)

	r := newMatrixRun(t, seed)
	r.p = r.s.start(t)
	begin := time.Now()
	for step := 0; r.total < kills; step++ {
		if step > 50*kills {
			t.Fatalf("%d calls made only %d of %d kills", step, r.total, kills)
		}
		r.step()
		if t.Failed() {
			break
		}
	}
	r.disarm()
	r.check("end", nil)
	if !r.p.stop(10 * time.Second) {
		t.Error("driver did not exit within 10s of SIGTERM")
	}
	r.summary(time.Since(begin))
}

func newMatrixRun(t *testing.T, seed uint64) *matrixRun {
	bin := driverBinary(t)
	fast := testutil.MountFS(t, testutil.XFSPlain, reflinkFS)
	s := newSiteWith(t, bin, copyPool, "dir")
	t.Cleanup(func() {
		if err := unmountUnder(s.dir()); err != nil {
			t.Errorf("clean-up: %v", err)
		}
	})
	root := filepath.Join(s.dir(), "adopt")
	cfg := fmt.Sprintf("pools:\n"+
		"- name: %s\n  path: %q\n  kind: dir\n  reservedBytes: 0\n  overcommit: true\n  ephemeral: {allowed: true}\n"+
		"- name: %s\n  path: %q\n  kind: dir\n  reservedBytes: 0\n"+
		"adoptRoots:\n- %q\n",
		copyPool, s.pool, reflinkPool, filepath.Join(fast, "pool"), root)
	if err := os.WriteFile(s.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	r := &matrixRun{
		t: t, s: s, rng: rand.New(rand.NewPCG(seed, 2)), root: root, fast: filepath.Join(fast, "pool"),
		took: map[string]time.Duration{}, acks: map[string]int{}, kills: map[string]int{},
	}
	for _, pool := range []string{copyPool, reflinkPool} {
		for i := range matrixNames {
			name := fmt.Sprintf("m-%s-%d", pool, i)
			id := storage.VolumeID(pool, name)
			r.vols = append(r.vols, &mvol{name: name, pool: pool, id: id, hash: hashOf(t, id)})
			sname := fmt.Sprintf("s-%s-%d", pool, i)
			sid := storage.SnapshotID(pool, sname)
			pid, err := storage.ParseSnapshotID(sid)
			if err != nil {
				t.Fatal(err)
			}
			r.snaps = append(r.snaps, &msnap{name: sname, pool: pool, id: sid, hash: pid.Hash})
		}
	}
	for i := range 3 {
		eph := fmt.Sprintf("csi-%064x", i+1)
		r.links = append(r.links, &mlink{
			kind: "ephemeral", id: eph, volID: storage.VolumeID(copyPool, storage.EphemeralName(eph)),
			target: podTarget(s, fmt.Sprintf("eph-%d", i)),
		})
		dir := filepath.Join(root, fmt.Sprintf("data-%d", i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		r.links = append(r.links, &mlink{
			kind: "adopted", id: fmt.Sprintf("adopted-data-%d", i), dir: dir,
			target: podTarget(s, fmt.Sprintf("adopted-%d", i)),
		})
	}
	return r
}

func hashOf(t *testing.T, id string) string {
	pid, err := storage.ParseVolumeID(id)
	if err != nil {
		t.Fatal(err)
	}
	return pid.Hash
}

// podTarget is kubelet's target path for a volume name, its parent made as
// kubelet makes it.
func podTarget(s *site, name string) string {
	target := filepath.Join(s.kubelet, "pods", "0000-"+name, "volumes", "kubernetes.io~csi", name, "mount")
	_ = os.MkdirAll(filepath.Dir(target), 0o750)
	return target
}

func (v *mvol) staging(s *site) string {
	return filepath.Join(s.kubelet, "plugins", "kubernetes.io", "csi", "berth", v.hash, "globalmount")
}

// how names the data path of a copy in pool.
func how(pool string) string {
	if pool == reflinkPool {
		return "reflink"
	}
	return "copy"
}

// call is one mutating call: the operation's name for the counts, the
// request, what its acknowledgement changes in the model, and what a kill
// inside it leaves unsure (volume and snapshot IDs, target paths).
type call struct {
	op     string
	do     func(ctx context.Context) error
	acked  func()
	unsure []string
}

// step picks an operation the model allows, makes it, and repeats it after
// every kill until it is acknowledged.
func (r *matrixRun) step() {
	c := r.pick()
	if c == nil {
		return
	}
	t := r.t
	failures := 0
	for attempt := 0; ; attempt++ {
		if attempt == 0 && r.pending == nil && r.rng.IntN(10) < 7 {
			avg := r.took[c.op]
			if avg == 0 {
				avg = 5 * time.Millisecond
			}
			r.arm(time.Duration(r.rng.Float64() * 1.25 * float64(avg)))
		}
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		start := time.Now()
		err := c.do(ctx)
		elapsed := time.Since(start)
		cancel()
		if err == nil {
			if attempt == 0 && (r.pending == nil || !r.pending.fired.Load()) {
				r.took[c.op] = (3*r.took[c.op] + elapsed) / 4
			}
			c.acked()
			r.acks[c.op]++
			r.disarm()
			return
		}
		if v := r.pending; v != nil && v.fired.Load() {
			<-v.done
			r.pending = nil
			r.kills[c.op]++
			r.total++
			r.restart(c.op, c.unsure)
			continue
		}
		if status.Code(err) == codes.Aborted {
			// A copy still running in the background (or a lock held by
			// the call the kill cut off): not acknowledged, asked again.
			r.aborted++
			time.Sleep(20 * time.Millisecond)
			continue
		}
		failures++
		t.Errorf("%s failed with no kill under way (code %v): %v", c.op, status.Code(err), err)
		if failures >= 5 {
			t.Fatalf("%s still fails after %d tries", c.op, failures)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// arm schedules a SIGKILL of the current driver after d.
func (r *matrixRun) arm(d time.Duration) {
	p, v := r.p, &victim{done: make(chan struct{})}
	v.timer = time.AfterFunc(d, func() {
		v.fired.Store(true)
		p.kill()
		close(v.done)
	})
	r.pending = v
}

// disarm cancels a pending kill; one that fired meanwhile, after the call
// was acknowledged, is followed by a restart.
func (r *matrixRun) disarm() {
	v := r.pending
	r.pending = nil
	if v == nil || v.timer.Stop() {
		return
	}
	<-v.done
	r.kills["between calls"]++
	r.total++
	r.restart("between calls", nil)
}

// restart starts a driver after a kill (now and then killing one more
// during its start-up) and checks what start-up reconciliation left.
func (r *matrixRun) restart(op string, unsure []string) {
	if r.rng.IntN(5) == 0 {
		early := r.s.launch(r.t)
		time.Sleep(time.Duration(r.rng.IntN(40)) * time.Millisecond)
		early.kill()
		r.early++
	}
	r.p = r.s.start(r.t)
	r.check(fmt.Sprintf("kill %d (in %s)", r.total, op), unsure)
}

// pick chooses an operation at random among those the model allows.
func (r *matrixRun) pick() *call {
	for range 20 {
		var c *call
		switch r.rng.IntN(10) {
		case 0:
			c = r.createOrDelete()
		case 1:
			c = r.snapshotOrDelete()
		case 2:
			c = r.restoreOrClone()
		case 3, 4:
			c = r.stageOrUnstage()
		case 5, 6:
			c = r.publishOrUnpublish()
		case 7, 8:
			c = r.linkOp("ephemeral")
		case 9:
			c = r.linkOp("adopted")
		}
		if c != nil {
			return c
		}
	}
	return nil
}

func pickOne[T any](rng *rand.Rand, xs []T, ok func(T) bool) (T, bool) {
	var cands []T
	for _, x := range xs {
		if ok(x) {
			cands = append(cands, x)
		}
	}
	var zero T
	if len(cands) == 0 {
		return zero, false
	}
	return cands[rng.IntN(len(cands))], true
}

func volumeRequest(v *mvol, src *csi.VolumeContentSource) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:                v.name,
		CapacityRange:       &csi.CapacityRange{RequiredBytes: matrixSize},
		VolumeCapabilities:  []*csi.VolumeCapability{xfsCapability},
		Parameters:          map[string]string{"pool": v.pool},
		VolumeContentSource: src,
	}
}

func (r *matrixRun) createVolume(op string, v *mvol, src *csi.VolumeContentSource) *call {
	return &call{
		op: op,
		do: func(ctx context.Context) error {
			resp, err := r.p.ctrl.CreateVolume(ctx, volumeRequest(v, src))
			if err == nil && resp.GetVolume().GetVolumeId() != v.id {
				r.t.Errorf("CreateVolume %s returned %s, want %s", v.name, resp.GetVolume().GetVolumeId(), v.id)
			}
			return err
		},
		acked:  func() { v.present = true },
		unsure: []string{v.id},
	}
}

func (r *matrixRun) createOrDelete() *call {
	if v, ok := pickOne(r.rng, r.vols, func(v *mvol) bool { return !v.present }); ok && r.rng.IntN(2) == 0 {
		return r.createVolume("create", v, nil)
	}
	v, ok := pickOne(r.rng, r.vols, func(v *mvol) bool { return v.present && !v.staged })
	if !ok {
		return nil
	}
	return &call{
		op: "delete",
		do: func(ctx context.Context) error {
			_, err := r.p.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id})
			return err
		},
		acked:  func() { v.present = false },
		unsure: []string{v.id},
	}
}

func (r *matrixRun) snapshotOrDelete() *call {
	if sn, ok := pickOne(r.rng, r.snaps, func(sn *msnap) bool { return !sn.present }); ok && r.rng.IntN(2) == 0 {
		src, ok := pickOne(r.rng, r.vols, func(v *mvol) bool { return v.present && v.pool == sn.pool })
		if !ok {
			return nil
		}
		return &call{
			op: "snapshot (" + how(sn.pool) + ")",
			do: func(ctx context.Context) error {
				resp, err := r.p.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: sn.name, SourceVolumeId: src.id})
				if err == nil && (resp.GetSnapshot().GetSnapshotId() != sn.id || !resp.GetSnapshot().GetReadyToUse()) {
					// Not ready: the copy goes on; ask again, as the sidecar does.
					return status.Errorf(codes.Aborted, "snapshot %s: id %s, ready %t",
						sn.name, resp.GetSnapshot().GetSnapshotId(), resp.GetSnapshot().GetReadyToUse())
				}
				return err
			},
			acked:  func() { sn.present = true },
			unsure: []string{sn.id},
		}
	}
	sn, ok := pickOne(r.rng, r.snaps, func(sn *msnap) bool { return sn.present })
	if !ok {
		return nil
	}
	return &call{
		op: "delete snapshot",
		do: func(ctx context.Context) error {
			_, err := r.p.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: sn.id})
			return err
		},
		acked:  func() { sn.present = false },
		unsure: []string{sn.id},
	}
}

func (r *matrixRun) restoreOrClone() *call {
	v, ok := pickOne(r.rng, r.vols, func(v *mvol) bool { return !v.present })
	if !ok {
		return nil
	}
	if r.rng.IntN(2) == 0 {
		sn, ok := pickOne(r.rng, r.snaps, func(sn *msnap) bool { return sn.present && sn.pool == v.pool })
		if !ok {
			return nil
		}
		return r.createVolume("restore ("+how(v.pool)+")", v, &csi.VolumeContentSource{
			Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: sn.id}},
		})
	}
	src, ok := pickOne(r.rng, r.vols, func(s *mvol) bool { return s.present && s.pool == v.pool })
	if !ok {
		return nil
	}
	return r.createVolume("clone ("+how(v.pool)+")", v, &csi.VolumeContentSource{
		Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.id}},
	})
}

func (r *matrixRun) stageOrUnstage() *call {
	if v, ok := pickOne(r.rng, r.vols, func(v *mvol) bool { return v.present && !v.staged }); ok && r.rng.IntN(2) == 0 {
		staging := v.staging(r.s)
		if err := os.MkdirAll(filepath.Dir(staging), 0o750); err != nil {
			r.t.Fatal(err)
		}
		return &call{
			op: "stage",
			do: func(ctx context.Context) error {
				_, err := r.p.node().NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
					VolumeId: v.id, StagingTargetPath: staging, VolumeCapability: xfsCapability,
					VolumeContext: map[string]string{"pool": v.pool},
				})
				return err
			},
			acked:  func() { v.staged = true },
			unsure: []string{staging},
		}
	}
	v, ok := pickOne(r.rng, r.vols, func(v *mvol) bool { return v.staged && v.target == "" })
	if !ok {
		return nil
	}
	staging := v.staging(r.s)
	return &call{
		op: "unstage",
		do: func(ctx context.Context) error {
			_, err := r.p.node().NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging})
			return err
		},
		acked:  func() { v.staged = false },
		unsure: []string{staging},
	}
}

func (r *matrixRun) publishOrUnpublish() *call {
	if v, ok := pickOne(r.rng, r.vols, func(v *mvol) bool { return v.staged && v.target == "" }); ok && r.rng.IntN(2) == 0 {
		target := podTarget(r.s, v.name)
		return &call{
			op: "publish",
			do: func(ctx context.Context) error {
				_, err := r.p.node().NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
					VolumeId: v.id, StagingTargetPath: v.staging(r.s), TargetPath: target,
					VolumeCapability: xfsCapability, VolumeContext: map[string]string{"pool": v.pool},
				})
				return err
			},
			acked:  func() { v.target = target; r.mark(target, v.id) },
			unsure: []string{target},
		}
	}
	v, ok := pickOne(r.rng, r.vols, func(v *mvol) bool { return v.target != "" })
	if !ok {
		return nil
	}
	target := v.target
	return &call{
		op: "unpublish",
		do: func(ctx context.Context) error {
			_, err := r.p.node().NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: target})
			return err
		},
		acked:  func() { v.target = "" },
		unsure: []string{target},
	}
}

// linkOp publishes or unpublishes an ephemeral inline volume or an adopted
// directory.
func (r *matrixRun) linkOp(kind string) *call {
	l, ok := pickOne(r.rng, r.links, func(l *mlink) bool { return l.kind == kind })
	if !ok {
		return nil
	}
	unsure := []string{l.target}
	if l.volID != "" {
		unsure = append(unsure, l.volID)
	}
	if !l.published {
		vctx := map[string]string{storage.AttrPath: l.dir}
		if kind == "ephemeral" {
			vctx = map[string]string{"csi.storage.k8s.io/ephemeral": "true", storage.AttrSize: "1Mi"}
		}
		return &call{
			op: kind + " publish",
			do: func(ctx context.Context) error {
				_, err := r.p.node().NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
					VolumeId: l.id, TargetPath: l.target, VolumeCapability: xfsCapability, VolumeContext: vctx,
				})
				return err
			},
			acked:  func() { l.published = true; r.mark(l.target, l.id) },
			unsure: unsure,
		}
	}
	return &call{
		op: kind + " unpublish",
		do: func(ctx context.Context) error {
			_, err := r.p.node().NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: l.id, TargetPath: l.target})
			return err
		},
		acked:  func() { l.published = false },
		unsure: unsure,
	}
}

// mark writes, through a publication just acknowledged, a file naming the
// volume, which checkMatrix reads back through the same target.
func (r *matrixRun) mark(target, id string) {
	if err := writeSync(filepath.Join(target, ".owner"), []byte(id)); err != nil {
		r.t.Errorf("write through %s, just published: %v", target, err)
	}
}

func (r *matrixRun) summary(elapsed time.Duration) {
	var b strings.Builder
	for _, op := range slices.Sorted(maps.Keys(r.kills)) {
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", op, r.kills[op])
	}
	r.t.Logf("kills: %d (%s) in %v; %d more during start-up", r.total, b.String(), elapsed.Round(time.Second), r.early)
	b.Reset()
	for _, op := range slices.Sorted(maps.Keys(r.acks)) {
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", op, r.acks[op])
	}
	r.t.Logf("acknowledged: %s; %d Aborted answers retried; %d checks, %d of them with GetCapacity decided by the accounting",
		b.String(), r.aborted, r.checks, r.seen)
}
