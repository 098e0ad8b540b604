package node_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"github.com/berth-csi/berth/internal/testengine"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/controller"
	"github.com/berth-csi/berth/pkg/locks"
	"github.com/berth-csi/berth/pkg/mounter"
	"github.com/berth-csi/berth/pkg/node"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/loop"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

// kindFixture is a node service and a controller sharing one engine (and one lock
// set) with a single pool, as the driver runs in "all" mode.
type kindFixture struct {
	*fixture
	ctrl *controller.Server
	cfg  storage.PoolConfig
}

// newKindFixture starts a node service and a controller on one pool of kind at
// poolPath, with a fresh kubelet dir. Whatever the test leaves mounted under the
// kubelet dir or attached from the pool is removed at cleanup, pass or fail, and
// reported as an error when the test otherwise passed.
func newKindFixture(t *testing.T, kind, poolPath string) *kindFixture {
	t.Helper()
	testutil.RequireRoot(t)
	base := t.TempDir()
	kubelet := filepath.Join(base, "kubelet")
	if err := os.MkdirAll(filepath.Join(kubelet, "pods"), 0o750); err != nil {
		t.Fatal(err)
	}
	if poolPath == "" {
		poolPath = filepath.Join(base, "pool")
	}
	t.Cleanup(func() { leaveNothing(t, kubelet, poolPath) })
	return startKind(t, base, kubelet, storage.PoolConfig{Name: kind + "-pool", Path: poolPath, Kind: kind})
}

// leaveNothing is the safety net behind every kind test: it unmounts the kubelet dir
// and detaches the pool's loop devices.
func leaveNothing(t *testing.T, kubelet, poolPath string) {
	t.Helper()
	mounts := mountsUnder(t, kubelet)
	testutil.UnmountTree(t, kubelet)
	devs, err := loop.List(poolPath)
	if err != nil {
		t.Error(err)
	}
	var paths []string
	for _, d := range devs {
		paths = append(paths, d.Path)
		if err := loop.Detach(d); err != nil {
			t.Errorf("detach leftover %s: %v", d.Path, err)
		}
	}
	if !t.Failed() && (len(mounts) > 0 || len(devs) > 0) {
		t.Errorf("the test left mounts %v and loop devices %v behind", mounts, paths)
	}
}

// startKind starts an engine on pc and the services on it, as a (re)started driver does.
func startKind(t *testing.T, base, kubelet string, pc storage.PoolConfig) *kindFixture {
	t.Helper()
	e := testengine.StartAny(t, storage.Config{Pools: []storage.PoolConfig{pc}})
	l := &locks.Set{}
	srv, err := node.New(node.Config{NodeID: testNode, KubeletDir: kubelet}, e, l)
	if err != nil {
		t.Fatal(err)
	}
	return &kindFixture{
		fixture: &fixture{srv: srv, engine: e, locks: l, pool: e.DefaultPool(), base: base, kubelet: kubelet},
		ctrl:    controller.New(e, testNode, l),
		cfg:     pc,
	}
}

// restartKind starts a new engine and services on f's pool and kubelet dir and runs
// Recover, as the driver does after a restart.
func (f *kindFixture) restartKind(t *testing.T) *kindFixture {
	t.Helper()
	g := startKind(t, f.base, f.kubelet, f.cfg)
	if err := g.srv.Recover(context.Background()); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	return g
}

var rwoBlock = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

// create provisions a volume through the controller, as the provisioner does, and
// returns its record.
func (f *kindFixture) create(t *testing.T, name string, size int64, params map[string]string, vc *csi.VolumeCapability) *storage.Record {
	t.Helper()
	resp, err := f.ctrl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name:               name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{vc},
		Parameters:         params,
	})
	wantCode(t, err, codes.OK)
	_, r, err := f.engine.Volume(resp.GetVolume().GetVolumeId())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// createImage creates an image volume of size bytes: a filesystem volume of fsType,
// or a block volume when fsType is empty.
func (f *kindFixture) createImage(t *testing.T, name string, size int64, fsType string) *storage.Record {
	t.Helper()
	if fsType == "" {
		return f.create(t, name, size, nil, rwoBlock)
	}
	return f.create(t, name, size, map[string]string{storage.ParamFSType: fsType}, rwo)
}

// capOf is the capability a volume was created for.
func capOf(r *storage.Record) *csi.VolumeCapability {
	if r.AccessType == storage.AccessBlock {
		return rwoBlock
	}
	return rwo
}

// stagingPath is a staging target path under the kubelet dir, its parent created.
func (f *kindFixture) stagingPath(t *testing.T, name string) string {
	t.Helper()
	parent := filepath.Join(f.kubelet, "plugins", "kubernetes.io", "csi", "berth", name)
	if err := os.MkdirAll(parent, 0o750); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(parent, "globalmount")
}

func stageReq(r *storage.Record, staging string) *csi.NodeStageVolumeRequest {
	return &csi.NodeStageVolumeRequest{VolumeId: r.ID, StagingTargetPath: staging, VolumeCapability: capOf(r)}
}

func (f *kindFixture) unstage(r *storage.Record, staging string) error {
	_, err := f.srv.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: r.ID, StagingTargetPath: staging})
	return err
}

// stage stages r at a fresh staging path and unstages it at cleanup.
func (f *kindFixture) stage(t *testing.T, r *storage.Record) string {
	t.Helper()
	staging := f.stagingPath(t, r.Hash())
	t.Cleanup(func() {
		if err := f.unstage(r, staging); err != nil {
			t.Errorf("unstage at cleanup: %v", err)
		}
	})
	_, err := f.srv.NodeStageVolume(context.Background(), stageReq(r, staging))
	wantCode(t, err, codes.OK)
	return staging
}

// publishStaged publishes r, staged at staging, at target and unpublishes it at cleanup.
func (f *kindFixture) publishStaged(t *testing.T, r *storage.Record, staging, target string) {
	t.Helper()
	t.Cleanup(func() {
		if err := f.unpublish(r.ID, target); err != nil {
			t.Errorf("unpublish at cleanup: %v", err)
		}
	})
	req := publishReq(r.ID, target, capOf(r), false)
	req.StagingTargetPath = staging
	_, err := f.srv.NodePublishVolume(context.Background(), req)
	wantCode(t, err, codes.OK)
}

// device returns the loop device backing r's image, or nil.
func (f *kindFixture) device(t *testing.T, r *storage.Record) *loop.Device {
	t.Helper()
	d, err := loop.Find(f.pool.ImagePath(r.Hash()))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// devices lists the loop devices backed by files of the pool.
func (f *kindFixture) devices(t *testing.T) []string {
	t.Helper()
	devs, err := loop.List(f.cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range devs {
		out = append(out, d.Path)
	}
	return out
}

// fill writes to fh until limit bytes are written or nothing more fits: 1 MiB at a
// time, then, once that fails, 4 KiB at a time. It fsyncs what it wrote and returns
// the bytes written and the last error.
func fill(fh *os.File, limit int64) (int64, error) {
	buf := make([]byte, 1<<20)
	_, _ = rand.Read(buf)
	var n int64
	var err error
	for chunk := int64(len(buf)); n < limit; {
		var w int
		w, err = fh.Write(buf[:min(chunk, limit-n)])
		n += int64(w)
		if err == nil {
			continue
		}
		if chunk == 4096 {
			break
		}
		chunk, err = 4096, nil
	}
	if serr := fh.Sync(); err == nil {
		err = serr
	}
	return n, err
}

// createFile opens a new file for fill, closed at cleanup.
func createFile(t *testing.T, path string) *os.File {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fh.Close() })
	return fh
}

func statfs(t *testing.T, path string) unix.Statfs_t {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// imageFilesystems are the filesystems image volumes are formatted with, each at
// a small size it accepts (mkfs.xfs wants 300 MiB).
var imageFilesystems = []struct {
	fsType string
	size   int64
}{
	{"ext4", 64 << 20},
	{"xfs", 320 << 20},
}

func TestImageLifecycle(t *testing.T) {
	for _, tc := range imageFilesystems {
		t.Run(tc.fsType, func(t *testing.T) {
			f := newKindFixture(t, storage.KindImage, "")
			r := f.createImage(t, "pvc-life", tc.size, tc.fsType)
			staging := f.stage(t, r)
			dev := f.device(t, r)
			if dev == nil {
				t.Fatal("no loop device after NodeStageVolume")
			}
			if !dev.DirectIO {
				t.Errorf("loop device %s is buffered, want direct I/O (the image shares no extents)", dev.Path)
			}
			if m := mountAt(t, staging); m.FSType != tc.fsType || !isDeviceOf(t, m.Major, m.Minor, dev) {
				t.Fatalf("staging mount %+v, want %s on %s", m, tc.fsType, dev.Path)
			}
			t1, t2 := f.target(t, "pod1"), f.target(t, "pod2")
			f.publishStaged(t, r, staging, t1)
			f.publishStaged(t, r, staging, t2)
			want := []byte("written through pod1")
			if err := os.WriteFile(filepath.Join(t1, "hello"), want, 0o644); err != nil {
				t.Fatal(err)
			}
			if got, err := os.ReadFile(filepath.Join(t2, "hello")); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("read through pod2: %q, %v", got, err)
			}

			wantCode(t, f.unpublish(r.ID, t1), codes.OK)
			wantCode(t, f.unpublish(r.ID, t2), codes.OK)
			wantCode(t, f.unstage(r, staging), codes.OK)
			if m := mountsUnder(t, f.kubelet); len(m) > 0 {
				t.Fatalf("mounts %v left after unpublish and unstage", m)
			}
			if d := f.devices(t); len(d) > 0 {
				t.Fatalf("loop devices %v left after unstage", d)
			}
			if st, err := f.pool.Staged(r.Hash()); err != nil || st != nil {
				t.Fatalf("staging record %+v (%v) after unstage", st, err)
			}

			// Staged again: the filesystem made at the first stage, with its data.
			_, err := f.srv.NodeStageVolume(context.Background(), stageReq(r, staging))
			wantCode(t, err, codes.OK)
			if got, err := os.ReadFile(filepath.Join(staging, "hello")); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("after staging again: %q, %v (reformatted?)", got, err)
			}
			wantCode(t, f.unstage(r, staging), codes.OK)
			if d := f.devices(t); len(d) > 0 {
				t.Fatalf("loop devices %v left after the second unstage", d)
			}
		})
	}
}

// mountAt returns the mount at path or fails the test.
func mountAt(t *testing.T, path string) *mounter.MountInfo {
	t.Helper()
	m, err := mounter.At(path)
	if err != nil || m == nil {
		t.Fatalf("no mount at %s (err %v)", path, err)
	}
	return m
}

// isDeviceOf reports whether major:minor is the device number of dev.
func isDeviceOf(t *testing.T, major, minor int, dev *loop.Device) bool {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dev.Path, &st); err != nil {
		t.Fatal(err)
	}
	return int(unix.Major(st.Rdev)) == major && int(unix.Minor(st.Rdev)) == minor
}

func TestImageWriteBeyondCapacity(t *testing.T) {
	for _, tc := range imageFilesystems {
		t.Run(tc.fsType, func(t *testing.T) {
			f := newKindFixture(t, storage.KindImage, "")
			r := f.createImage(t, "pvc-full", tc.size, tc.fsType)
			staging := f.stage(t, r)
			target := f.target(t, "pod")
			f.publishStaged(t, r, staging, target)
			n, err := fill(createFile(t, filepath.Join(target, "blob")), r.CapacityBytes+1<<20)
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatalf("writing %d bytes into a %d-byte volume: %v after %d bytes, want ENOSPC", r.CapacityBytes+1<<20, r.CapacityBytes, err, n)
			}
			if n >= r.CapacityBytes {
				t.Fatalf("%d bytes written into a %d-byte volume", n, r.CapacityBytes)
			}
		})
	}
}

func TestImageBlock(t *testing.T) {
	f := newKindFixture(t, storage.KindImage, "")
	r := f.createImage(t, "pvc-block", 100<<20, "")
	staging := f.stage(t, r)
	if isMounted(t, staging) {
		t.Fatal("a block volume's staging path is mounted")
	}
	if f.device(t, r) == nil {
		t.Fatal("no loop device after NodeStageVolume")
	}
	target := filepath.Join(f.kubelet, "pods", "pod", "volumeDevices", "pvc-block")
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		t.Fatal(err)
	}
	f.publishStaged(t, r, staging, target)

	var st unix.Stat_t
	if err := unix.Stat(target, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		t.Fatalf("target mode %#o (err %v), want a block device", st.Mode, err)
	}
	if size, err := loop.Size(target); err != nil || size != 100<<20 {
		t.Fatalf("device size %d (err %v), want %d", size, err, 100<<20)
	}
	resp, err := f.srv.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: r.ID, VolumePath: target})
	wantCode(t, err, codes.OK)
	if u := resp.GetUsage(); len(u) != 1 || u[0].GetUnit() != csi.VolumeUsage_BYTES || u[0].GetTotal() != 100<<20 {
		t.Fatalf("stats %v, want total bytes %d", u, 100<<20)
	}

	// 1 MiB at an offset through the device lands in the image at that offset.
	const off = 10 << 20
	data := make([]byte, 1<<20)
	_, _ = rand.Read(data)
	fh, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close() // closed below too, before the unpublish
	if _, err := fh.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if err := fh.Sync(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := fh.ReadAt(got, off); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back through the device: %v", err)
	}
	fh.Close()
	img, err := os.Open(f.pool.ImagePath(r.Hash()))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.ReadAt(got, off); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back from the image file: %v", err)
	}

	wantCode(t, f.unpublish(r.ID, target), codes.OK)
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("block target still there after unpublish (err %v)", err)
	}
	wantCode(t, f.unstage(r, staging), codes.OK)
	if d := f.devices(t); len(d) > 0 {
		t.Fatalf("loop devices %v left after unstage", d)
	}
}

// expand asks the node to grow r to required bytes (at most limit, when set).
func (f *kindFixture) expand(r *storage.Record, staging, target string, required, limit int64) (*csi.NodeExpandVolumeResponse, error) {
	return f.srv.NodeExpandVolume(context.Background(), &csi.NodeExpandVolumeRequest{
		VolumeId: r.ID, VolumePath: target, StagingTargetPath: staging,
		CapacityRange: &csi.CapacityRange{RequiredBytes: required, LimitBytes: limit},
	})
}

func TestImageExpandOnline(t *testing.T) {
	f := newKindFixture(t, storage.KindImage, "")
	r := f.createImage(t, "pvc-grow", 320<<20, "xfs")
	staging := f.stage(t, r)
	target := f.target(t, "pod")
	f.publishStaged(t, r, staging, target)

	fh := createFile(t, filepath.Join(target, "blob"))
	if n, err := fill(fh, r.CapacityBytes+1<<20); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("filling the volume: %v after %d bytes, want ENOSPC", err, n)
	}
	before := statfs(t, target)
	resp, err := f.expand(r, staging, target, 400<<20, 0)
	wantCode(t, err, codes.OK)
	if resp.GetCapacityBytes() != 400<<20 {
		t.Fatalf("capacity_bytes %d, want %d", resp.GetCapacityBytes(), 400<<20)
	}
	if size, err := loop.Size(f.device(t, r).Path); err != nil || size != 400<<20 {
		t.Fatalf("loop device size %d (err %v), want %d", size, err, 400<<20)
	}
	after := statfs(t, target)
	if grown := (int64(after.Blocks) - int64(before.Blocks)) * after.Bsize; grown < 64<<20 {
		t.Fatalf("the filesystem at the target grew by %d bytes, want about 80 MiB", grown)
	}
	// The mount never went away: the same descriptor goes on writing.
	if !isMounted(t, target) {
		t.Fatal("target no longer mounted after expansion")
	}
	if n, err := fill(fh, 32<<20); err != nil {
		t.Fatalf("writing 32 MiB more after expansion: %v after %d bytes", err, n)
	}

	for _, tc := range []struct {
		name            string
		required, limit int64
		wantCode        codes.Code
		wantCapacity    int64
	}{
		{"same size again", 400 << 20, 0, codes.OK, 400 << 20},
		{"smaller than the volume", 300 << 20, 0, codes.OutOfRange, 0},
		{"limit below the volume", 0, 350 << 20, codes.OutOfRange, 0},
		{"rounded size above the limit", 400<<20 + 1, 400<<20 + 100, codes.OutOfRange, 0},
		{"required above the limit", 500 << 20, 450 << 20, codes.InvalidArgument, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := f.expand(r, staging, target, tc.required, tc.limit)
			wantCode(t, err, tc.wantCode)
			if err == nil && resp.GetCapacityBytes() != tc.wantCapacity {
				t.Fatalf("capacity_bytes %d, want %d", resp.GetCapacityBytes(), tc.wantCapacity)
			}
			if _, got, _ := f.engine.Volume(r.ID); got.CapacityBytes != 400<<20 {
				t.Fatalf("recorded capacity %d, want %d", got.CapacityBytes, 400<<20)
			}
		})
	}
}

// hasCapSysResource reports whether this process may grow a mounted ext4, checked
// as pkg/node/expand.go does.
func hasCapSysResource(t *testing.T) bool {
	t.Helper()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	return data[0].Effective&(1<<unix.CAP_SYS_RESOURCE) != 0
}

func TestImageExpandExt4Online(t *testing.T) {
	f := newKindFixture(t, storage.KindImage, "")
	r := f.createImage(t, "pvc-grow-ext4", 64<<20, "ext4")
	staging := f.stage(t, r)
	target := f.target(t, "pod")
	f.publishStaged(t, r, staging, target)
	before := statfs(t, target)

	_, err := f.expand(r, staging, target, 96<<20, 0)
	if hasCapSysResource(t) {
		wantCode(t, err, codes.OK)
		if after := statfs(t, target); after.Blocks <= before.Blocks {
			t.Fatalf("filesystem blocks %d, then %d after expansion", before.Blocks, after.Blocks)
		}
		return
	}
	wantCode(t, err, codes.FailedPrecondition)
	// Refused, so nothing changed: the volume keeps its recorded size and its image.
	if _, got, _ := f.engine.Volume(r.ID); got.CapacityBytes != 64<<20 {
		t.Fatalf("recorded capacity %d after a refused expansion, want %d", got.CapacityBytes, 64<<20)
	}
	if fi, err := os.Stat(f.pool.ImagePath(r.Hash())); err != nil || fi.Size() != 64<<20 {
		t.Fatalf("image size %d (err %v) after a refused expansion", fi.Size(), err)
	}
	// Asking for the size it has needs no growing.
	_, err = f.expand(r, staging, target, 64<<20, 0)
	wantCode(t, err, codes.OK)
}

func TestImageExpandUnstaged(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fsType   string // empty: a block volume
		from, to int64
	}{
		{"xfs", "xfs", 320 << 20, 400 << 20},
		{"ext4", "ext4", 64 << 20, 96 << 20},
		{"block", "", 64 << 20, 96 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newKindFixture(t, storage.KindImage, "")
			r := f.createImage(t, "pvc-grow-offline", tc.from, tc.fsType)
			staging := f.stage(t, r)
			var before unix.Statfs_t
			if tc.fsType != "" {
				before = statfs(t, staging)
				writeSynced(t, filepath.Join(staging, "kept"), 1<<20)
			}
			wantCode(t, f.unstage(r, staging), codes.OK)

			// Neither staged nor published, the volume is available at no volume_path.
			_, err := f.expand(r, "", staging, tc.to, 0)
			wantCode(t, err, codes.FailedPrecondition)
			// An expansion recorded before an unstage (kubelet's retry after a crash
			// between its steps comes once the volume is staged again) ...
			grown, err := f.pool.Expand(context.Background(), r.Hash(), tc.to, 0)
			if err != nil || grown.CapacityBytes != tc.to {
				t.Fatalf("Expand: %+v, %v; want %d bytes", grown, err, tc.to)
			}
			// ... is served by the next stage.
			_, err = f.srv.NodeStageVolume(context.Background(), stageReq(r, staging))
			wantCode(t, err, codes.OK)
			if size, err := loop.Size(f.device(t, r).Path); err != nil || size != tc.to {
				t.Fatalf("loop device size %d (err %v), want %d", size, err, tc.to)
			}
			if tc.fsType == "" {
				return
			}
			if after := statfs(t, staging); (int64(after.Blocks)-int64(before.Blocks))*after.Bsize < (tc.to-tc.from)*8/10 {
				t.Fatalf("filesystem of %d blocks, then %d after growing by %d bytes", before.Blocks, after.Blocks, tc.to-tc.from)
			}
			if _, err := os.Stat(filepath.Join(staging, "kept")); err != nil {
				t.Fatalf("data written before the expansion: %v", err)
			}
		})
	}
}

func TestImageRestart(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fsType string // empty: a block volume
	}{
		{"filesystem", "ext4"},
		{"block", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newKindFixture(t, storage.KindImage, "")
			r := f.createImage(t, "pvc-restart", 64<<20, tc.fsType)
			staging := f.stage(t, r)
			target := filepath.Join(f.kubelet, "pods", "pod", "volumes", "pvc-restart")
			if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
				t.Fatal(err)
			}
			f.publishStaged(t, r, staging, target)
			dev := f.device(t, r)

			g := f.restartKind(t)
			if d := g.devices(t); !slices.Equal(d, []string{dev.Path}) {
				t.Fatalf("loop devices %v after restart, want [%s]", d, dev.Path)
			}
			if _, ok := publications(g.engine, r.ID)[target]; !ok {
				t.Fatalf("publications after restart %v, want %s", publications(g.engine, r.ID), target)
			}
			_, err := g.srv.NodeStageVolume(context.Background(), stageReq(r, staging))
			wantCode(t, err, codes.OK)
			if d := g.devices(t); !slices.Equal(d, []string{dev.Path}) {
				t.Fatalf("loop devices %v after staging again, want [%s]", d, dev.Path)
			}
			// The recovered publication is recognised as done.
			req := publishReq(r.ID, target, capOf(r), false)
			req.StagingTargetPath = staging
			_, err = g.srv.NodePublishVolume(context.Background(), req)
			wantCode(t, err, codes.OK)
		})
	}
}

func TestImageRecoverLeftoverDevice(t *testing.T) {
	for _, tc := range []struct {
		name     string
		recorded bool // the staging record was written before the crash
	}{
		{"attached without a staging record", false},
		{"attached and recorded, never mounted", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newKindFixture(t, storage.KindImage, "")
			r := f.createImage(t, "pvc-crash", 64<<20, "ext4")
			staging := f.stagingPath(t, r.Hash())
			if tc.recorded {
				if err := f.pool.MarkStaged(r.Hash(), staging); err != nil {
					t.Fatal(err)
				}
			}
			dev, err := loop.Attach(f.pool.ImagePath(r.Hash()), false)
			if err != nil {
				t.Fatal(err)
			}

			g := f.restartKind(t)
			if !tc.recorded {
				if d := g.devices(t); len(d) > 0 {
					t.Fatalf("loop devices %v after Recover, want the leftover detached", d)
				}
				return
			}
			if d := g.devices(t); !slices.Equal(d, []string{dev.Path}) {
				t.Fatalf("loop devices %v after Recover, want [%s] kept", d, dev.Path)
			}
			t.Cleanup(func() {
				if err := g.unstage(r, staging); err != nil {
					t.Errorf("unstage at cleanup: %v", err)
				}
			})
			_, err = g.srv.NodeStageVolume(context.Background(), stageReq(r, staging))
			wantCode(t, err, codes.OK)
			if m := mountAt(t, staging); !isDeviceOf(t, m.Major, m.Minor, dev) {
				t.Fatalf("staging mount %+v is not of %s", m, dev.Path)
			}
			if d := g.devices(t); !slices.Equal(d, []string{dev.Path}) {
				t.Fatalf("loop devices %v after staging, want [%s]", d, dev.Path)
			}
		})
	}
}

func TestImageDeleteStaged(t *testing.T) {
	f := newKindFixture(t, storage.KindImage, "")
	r := f.createImage(t, "pvc-delete", 64<<20, "ext4")
	del := func() error {
		_, err := f.ctrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: r.ID})
		return err
	}
	staging := f.stage(t, r)
	wantCode(t, del(), codes.FailedPrecondition)
	target := f.target(t, "pod")
	f.publishStaged(t, r, staging, target)
	wantCode(t, del(), codes.FailedPrecondition)
	wantCode(t, f.unpublish(r.ID, target), codes.OK)
	wantCode(t, del(), codes.FailedPrecondition)
	wantCode(t, f.unstage(r, staging), codes.OK)
	wantCode(t, del(), codes.OK)
	if _, _, err := f.engine.Volume(r.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("volume still known after DeleteVolume (err %v)", err)
	}
}

func TestImageStats(t *testing.T) {
	f := newKindFixture(t, storage.KindImage, "")
	r := f.createImage(t, "pvc-stats", 64<<20, "ext4")
	staging := f.stage(t, r)
	target := f.target(t, "pod")
	f.publishStaged(t, r, staging, target)

	b0, i0 := f.usage(t, r.ID, target)
	if b0.GetTotal() > r.CapacityBytes || b0.GetTotal() < r.CapacityBytes*8/10 {
		t.Fatalf("total bytes %d of a %d-byte volume, want its filesystem's size", b0.GetTotal(), r.CapacityBytes)
	}
	if i0.GetTotal() <= 0 || i0.GetAvailable() <= 0 {
		t.Fatalf("inodes %v, want the filesystem's", i0)
	}
	writeSynced(t, filepath.Join(target, "blob"), 4<<20)
	b1, i1 := f.usage(t, r.ID, target)
	if grown := b1.GetUsed() - b0.GetUsed(); grown < 4<<20 {
		t.Fatalf("used bytes grew by %d after writing 4 MiB", grown)
	}
	if i1.GetUsed() != i0.GetUsed()+1 {
		t.Fatalf("inodes used %d, then %d after one file", i0.GetUsed(), i1.GetUsed())
	}
}

func TestImageHealthFull(t *testing.T) {
	for _, tc := range imageFilesystems {
		t.Run(tc.fsType, func(t *testing.T) { testImageHealthFull(t, tc.fsType, tc.size) })
	}
}

func testImageHealthFull(t *testing.T, fsType string, size int64) {
	f := newKindFixture(t, storage.KindImage, "")
	r := f.createImage(t, "pvc-health", size, fsType)
	staging := f.stage(t, r)
	target := f.target(t, "pod")
	f.publishStaged(t, r, staging, target)
	reasons := func() []string {
		resp, err := f.srv.NodeGetVolumeHealth(context.Background(), &csi.NodeGetVolumeHealthRequest{VolumeId: r.ID, VolumePublishPath: target})
		wantCode(t, err, codes.OK)
		var out []string
		for _, e := range resp.GetVolumeHealth().GetHealthStatuses() {
			out = append(out, e.GetReason())
		}
		return out
	}
	if got := reasons(); len(got) > 0 {
		t.Fatalf("health of a fresh volume: %v, want none", got)
	}
	if n, err := fill(createFile(t, filepath.Join(target, "blob")), r.CapacityBytes); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("filling the volume: %v after %d bytes, want ENOSPC", err, n)
	}
	if got := reasons(); !slices.Equal(got, []string{"CapacityExhausted"}) {
		t.Fatalf("health of a full volume: %v, want [CapacityExhausted]", got)
	}
}

func TestImageGetCapacity(t *testing.T) {
	testutil.RequireRoot(t)
	// A tmpfs of its own, so nothing else changes the pool's free space; the image
	// files are sparse and take none of it.
	fsDir := filepath.Join(t.TempDir(), "fs")
	testutil.MountTmpfs(t, fsDir, 1<<30)
	f := newKindFixture(t, storage.KindImage, filepath.Join(fsDir, "pool"))
	capacity := func() int64 {
		resp, err := f.ctrl.GetCapacity(context.Background(), &csi.GetCapacityRequest{})
		wantCode(t, err, codes.OK)
		return resp.GetAvailableCapacity()
	}
	// With some capacity promised, the promises bound what is available.
	f.createImage(t, "pvc-base", 64<<20, "ext4")
	c0 := capacity()
	a := f.createImage(t, "pvc-a", 100<<20, "ext4")
	b := f.createImage(t, "pvc-b", 36<<20+123, "") // rounded up to 36 MiB + 4 KiB
	if b.CapacityBytes != 36<<20+4096 {
		t.Fatalf("capacity %d, want %d", b.CapacityBytes, 36<<20+4096)
	}
	if got, want := capacity(), c0-a.CapacityBytes-b.CapacityBytes; got != want {
		t.Fatalf("available %d after two volumes, want %d", got, want)
	}
	for i, r := range []*storage.Record{a, b} {
		_, err := f.ctrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: r.ID})
		wantCode(t, err, codes.OK)
		want := c0 - b.CapacityBytes
		if i == 1 {
			want = c0
		}
		if got := capacity(); got != want {
			t.Fatalf("available %d after deleting %s, want %d", got, r.Name, want)
		}
	}
}
