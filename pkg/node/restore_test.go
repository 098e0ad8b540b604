package node_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"github.com/berth-csi/berth/internal/testengine"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/controller"
	"github.com/berth-csi/berth/pkg/locks"
	"github.com/berth-csi/berth/pkg/node"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/loop"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

// copyTimeout bounds a snapshot's background copy, and any write that a filesystem
// left frozen would block.
const copyTimeout = 2 * time.Minute

// restoreFixture is a controller and a node service sharing one engine, with one pool
// on a fresh loop filesystem, as the driver runs in "all" mode.
type restoreFixture struct {
	ctrl    *controller.Server
	srv     *node.Server
	engine  *storage.Engine
	pool    *storage.Pool
	kubelet string
}

// newRestoreFixture starts the services on a pool of kind on a 4 GiB filesystem fs
// made on a loop file. Whatever the test leaves mounted under the kubelet dir or
// attached from the pool is removed at cleanup, pass or fail, and is an error when
// the test otherwise passed.
func newRestoreFixture(t *testing.T, fs testutil.FS, kind string) *restoreFixture {
	t.Helper()
	testutil.RequireRoot(t)
	pc := storage.PoolConfig{Name: "p", Path: filepath.Join(testutil.MountFS(t, fs, 4<<30), "pool"), Kind: kind}
	kubelet, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(kubelet, "pods"), 0o750); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		left := mountsUnder(t, kubelet)
		testutil.UnmountTree(t, kubelet)
		devs, err := loop.List(pc.Path)
		if err != nil {
			t.Error(err)
		}
		for _, d := range devs {
			if err := loop.Detach(d); err != nil {
				t.Errorf("detach leftover %s: %v", d.Path, err)
			}
		}
		if !t.Failed() && (len(left) > 0 || len(devs) > 0) {
			t.Errorf("the test left mounts %v and %d loop devices behind", left, len(devs))
		}
	})
	e := testengine.StartAny(t, storage.Config{Pools: []storage.PoolConfig{pc}})
	l := &locks.Set{}
	srv, err := node.New(node.Config{NodeID: testNode, KubeletDir: kubelet}, e, l)
	if err != nil {
		t.Fatal(err)
	}
	return &restoreFixture{ctrl: controller.New(e, testNode, l), srv: srv, engine: e, pool: e.DefaultPool(), kubelet: kubelet}
}

// createFrom provisions volume name of size bytes (fsType for an image pool; ""
// asks for none), from source when set, and returns its record.
func (f *restoreFixture) createFrom(t *testing.T, name string, size int64, fsType string, source *csi.VolumeContentSource) (*storage.Record, error) {
	t.Helper()
	params := map[string]string{controller.ParamPool: "p"}
	if fsType != "" {
		params[storage.ParamFSType] = fsType
	}
	resp, err := f.ctrl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{rwo}, Parameters: params, VolumeContentSource: source,
	})
	if err != nil {
		return nil, err
	}
	_, r, err := f.engine.Volume(resp.GetVolume().GetVolumeId())
	if err != nil {
		t.Fatal(err)
	}
	return r, nil
}

func (f *restoreFixture) mustCreateFrom(t *testing.T, name string, size int64, fsType string, source *csi.VolumeContentSource) *storage.Record {
	t.Helper()
	r, err := f.createFrom(t, name, size, fsType, source)
	wantCode(t, err, codes.OK)
	return r
}

// snapshotReady makes snapshot name of volume src, repeating the call until it is
// ready as the snapshot sidecar does, and returns it as a content source.
func (f *restoreFixture) snapshotReady(t *testing.T, name, src string) *csi.VolumeContentSource {
	t.Helper()
	for deadline := time.Now().Add(copyTimeout); ; time.Sleep(20 * time.Millisecond) {
		resp, err := f.ctrl.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: src})
		wantCode(t, err, codes.OK)
		if s := resp.GetSnapshot(); s.GetReadyToUse() {
			return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
				Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: s.GetSnapshotId()}}}
		}
		if time.Now().After(deadline) {
			t.Fatalf("snapshot %s not ready after %v", name, copyTimeout)
		}
	}
}

func volumeSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

// mounted is a volume staged (image pools) and published, as a pod sees it.
type mounted struct {
	r               *storage.Record
	staging, target string
}

// mount stages (image pools) and publishes r for pod, and undoes both at cleanup.
func (f *restoreFixture) mount(t *testing.T, r *storage.Record, pod string) *mounted {
	t.Helper()
	m := &mounted{r: r, target: filepath.Join(f.kubelet, "pods", pod, "volumes", "mount")}
	if err := os.MkdirAll(filepath.Dir(m.target), 0o750); err != nil {
		t.Fatal(err)
	}
	if f.pool.Kind() == storage.KindImage {
		m.staging = filepath.Join(f.kubelet, "plugins", "berth", r.Hash(), "globalmount")
		if err := os.MkdirAll(filepath.Dir(m.staging), 0o750); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.unmount(t, m) })
		_, err := f.srv.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{
			VolumeId: r.ID, StagingTargetPath: m.staging, VolumeCapability: rwo})
		wantCode(t, err, codes.OK)
	} else {
		t.Cleanup(func() { f.unmount(t, m) })
	}
	_, err := f.srv.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{
		VolumeId: r.ID, TargetPath: m.target, StagingTargetPath: m.staging, VolumeCapability: rwo})
	wantCode(t, err, codes.OK)
	return m
}

// unmount unpublishes and unstages m; both are idempotent.
func (f *restoreFixture) unmount(t *testing.T, m *mounted) {
	t.Helper()
	if _, err := f.srv.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{
		VolumeId: m.r.ID, TargetPath: m.target}); err != nil {
		t.Errorf("unpublish %s: %v", m.r.ID, err)
	}
	if m.staging == "" {
		return
	}
	if _, err := f.srv.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{
		VolumeId: m.r.ID, StagingTargetPath: m.staging}); err != nil {
		t.Errorf("unstage %s: %v", m.r.ID, err)
	}
}

// writeRandomFiles writes n files of size random bytes under dir/tag, synced, as a
// pod would; a frozen filesystem fails the test instead of blocking it.
func writeRandomFiles(t *testing.T, dir, tag string, n int, size int64) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		done <- func() error {
			for i := range n {
				path := filepath.Join(dir, tag, fmt.Sprintf("d%d", i%2), fmt.Sprintf("f%d", i))
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					return err
				}
				f, err := os.Create(path)
				if err != nil {
					return err
				}
				_, err = io.CopyN(f, rand.Reader, size)
				if err == nil {
					err = f.Sync()
				}
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return err
				}
			}
			return nil
		}()
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(copyTimeout):
		t.Fatalf("writing to %s blocked for %v: is its filesystem still frozen?", dir, copyTimeout)
	}
}

// TestImageSnapshotRestoreClone snapshots and clones image volumes while they are
// published and written to (their filesystem is frozen around the copy), on a pool on
// XFS with reflink and on ext4: restored and cloned volumes, staged and published,
// hold the data of the moment of the copy; the source stays writable.
func TestImageSnapshotRestoreClone(t *testing.T) {
	tests := []struct {
		name   string
		poolFS testutil.FS
		fsType string
		size   int64
	}{
		{"ext4 image on xfs-reflink", testutil.XFSPlain, "ext4", 64 << 20},
		{"xfs image on xfs-reflink", testutil.XFSPlain, "xfs", 320 << 20},
		{"ext4 image on ext4", testutil.Ext4Plain, "ext4", 64 << 20},
		{"xfs image on ext4", testutil.Ext4Plain, "xfs", 320 << 20},
	}
	// A copy of an xfs image carries its source's filesystem UUID, and XFS refuses to
	// mount a second filesystem with a UUID already mounted ("duplicate UUID") unless
	// mounted nouuid: the xfs cases stage a copy beside its published source, as a
	// node-local volume always is.
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newRestoreFixture(t, tc.poolFS, storage.KindImage)
			src := f.mount(t, f.mustCreateFrom(t, "src", tc.size, tc.fsType, nil), "pod-src")
			writeRandomFiles(t, src.target, "a", 6, 2<<20)
			atSnapshot := testutil.TreeSums(t, src.target)

			snap := f.snapshotReady(t, "snap", src.r.ID)
			writeRandomFiles(t, src.target, "b", 2, 1<<20)
			atClone := testutil.TreeSums(t, src.target)
			clone := f.mustCreateFrom(t, "clone", tc.size, tc.fsType, volumeSource(src.r.ID))
			writeRandomFiles(t, src.target, "c", 1, 1<<20)

			restored := f.mount(t, f.mustCreateFrom(t, "restored", tc.size, tc.fsType, snap), "pod-restored")
			testutil.SameTree(t, "the restored volume", testutil.TreeSums(t, restored.target), atSnapshot)
			cloned := f.mount(t, clone, "pod-clone")
			testutil.SameTree(t, "the clone", testutil.TreeSums(t, cloned.target), atClone)

			// Writes to the copies reach neither the source nor the snapshot.
			writeRandomFiles(t, restored.target, "r", 1, 1<<20)
			writeRandomFiles(t, cloned.target, "k", 1, 1<<20)
			if _, err := os.Stat(filepath.Join(src.target, "r")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a write to the restored volume reached the source (%v)", err)
			}
			again := f.mount(t, f.mustCreateFrom(t, "again", tc.size, tc.fsType, snap), "pod-again")
			testutil.SameTree(t, "the second restored volume", testutil.TreeSums(t, again.target), atSnapshot)
		})
	}
}

// TestImageRestoreSize restores image volumes into a larger size: the filesystem,
// once staged, has grown to it (ext4 offline, xfs online). A smaller size is OutOfRange.
func TestImageRestoreSize(t *testing.T) {
	for _, tc := range []struct {
		fsType          string
		size, largeSize int64
	}{
		{"ext4", 64 << 20, 192 << 20},
		{"xfs", 320 << 20, 512 << 20},
	} {
		t.Run(tc.fsType, func(t *testing.T) {
			f := newRestoreFixture(t, testutil.XFSPlain, storage.KindImage)
			src := f.mount(t, f.mustCreateFrom(t, "src", tc.size, tc.fsType, nil), "pod-src")
			writeRandomFiles(t, src.target, "a", 2, 1<<20)
			want := testutil.TreeSums(t, src.target)
			st := statfsOf(t, src.target)
			srcBytes := int64(st.Blocks) * st.Bsize
			snap := f.snapshotReady(t, "snap", src.r.ID)
			f.unmount(t, src)

			_, err := f.createFrom(t, "smaller", tc.size-4096, tc.fsType, snap)
			wantCode(t, err, codes.OutOfRange)
			_, err = f.createFrom(t, "smaller-clone", tc.size-4096, tc.fsType, volumeSource(src.r.ID))
			wantCode(t, err, codes.OutOfRange)

			for name, source := range map[string]*csi.VolumeContentSource{"restore": snap, "clone": volumeSource(src.r.ID)} {
				large := f.mount(t, f.mustCreateFrom(t, name, tc.largeSize, tc.fsType, source), "pod-"+name)
				testutil.SameTree(t, "the larger copy", testutil.TreeSums(t, large.target), want)
				st := statfsOf(t, large.target)
				if got, grown := int64(st.Blocks)*st.Bsize, tc.largeSize-tc.size; got < srcBytes+grown*9/10 {
					t.Fatalf("%s: the filesystem of the %d-byte copy has %d bytes, its %d-byte source %d: not grown", name, tc.largeSize, got, tc.size, srcBytes)
				}
				writeRandomFiles(t, large.target, "more", 1, (tc.largeSize-tc.size)/2)
				f.unmount(t, large)
			}
		})
	}
}

func statfsOf(t *testing.T, path string) unix.Statfs_t {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestImageRestoreFSType restores an xfs image volume: a request that names no
// filesystem gets the snapshot's; one that names another is InvalidArgument.
func TestImageRestoreFSType(t *testing.T) {
	f := newRestoreFixture(t, testutil.XFSPlain, storage.KindImage)
	src := f.mount(t, f.mustCreateFrom(t, "src", 320<<20, "xfs", nil), "pod-src")
	writeRandomFiles(t, src.target, "a", 1, 1<<20)
	want := testutil.TreeSums(t, src.target)
	snap := f.snapshotReady(t, "snap", src.r.ID)
	f.unmount(t, src)

	_, err := f.createFrom(t, "other-fs", 320<<20, "ext4", snap)
	wantCode(t, err, codes.InvalidArgument)
	_, err = f.createFrom(t, "other-fs-clone", 320<<20, "ext4", volumeSource(src.r.ID))
	wantCode(t, err, codes.InvalidArgument)
	for name, source := range map[string]*csi.VolumeContentSource{"restore": snap, "clone": volumeSource(src.r.ID)} {
		r := f.mustCreateFrom(t, name, 320<<20, "", source)
		if r.FSType != "xfs" {
			t.Fatalf("restored volume recorded with fsType %q, want the source's xfs", r.FSType)
		}
		m := f.mount(t, r, "pod-"+r.Hash())
		testutil.SameTree(t, "the restored volume", testutil.TreeSums(t, m.target), want)
		f.unmount(t, m)
	}
}

// TestRestoredVolumeNosuidNodev restores a dir volume holding a setuid-root program
// and a device node: the copy keeps them as they were, and the node publishes it
// nosuid and nodev, so neither can be used through the pod's mount. The same files
// reached through the pool's own (suid, dev) mount show that they would work.
func TestRestoredVolumeNosuidNodev(t *testing.T) {
	for _, tc := range []struct {
		name string
		fs   testutil.FS
	}{
		{"xfs-reflink", testutil.XFSPlain},
		{"ext4", testutil.Ext4Plain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newRestoreFixture(t, tc.fs, storage.KindDir)
			src := f.mustCreateFrom(t, "src", 64<<20, "", nil)
			data := f.pool.DataPath(src.Hash())
			prog, err := os.ReadFile("/usr/bin/id")
			if err != nil {
				t.Skipf("no /usr/bin/id to make a setuid program of: %v", err)
			}
			if err := os.WriteFile(filepath.Join(data, "id"), prog, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(filepath.Join(data, "id"), 0o755|os.ModeSetuid); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mknod(filepath.Join(data, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
				t.Fatal(err)
			}

			restored := f.mustCreateFrom(t, "restored", 64<<20, "", f.snapshotReady(t, "snap", src.ID))
			m := f.mount(t, restored, "pod")
			opts := mountOptions(t, m.target)
			if !slices.Contains(opts, "nosuid") || !slices.Contains(opts, "nodev") {
				t.Fatalf("restored volume published with %v, want nosuid and nodev", opts)
			}
			var st unix.Stat_t
			if err := unix.Stat(filepath.Join(m.target, "id"), &st); err != nil || st.Mode&unix.S_ISUID == 0 || st.Uid != 0 {
				t.Fatalf("the restored program: mode %#o uid %d (%v), want setuid root as in its source", st.Mode, st.Uid, err)
			}
			if err := unix.Stat(filepath.Join(m.target, "null"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(1, 3) {
				t.Fatalf("the restored device node: mode %#o rdev %#x (%v)", st.Mode, st.Rdev, err)
			}

			if _, err := os.OpenFile(filepath.Join(m.target, "null"), os.O_WRONLY, 0); !errors.Is(err, unix.EACCES) {
				t.Fatalf("opening the device node through the pod's mount: %v, want EACCES (nodev)", err)
			}
			if got := euidAsNobody(t, filepath.Join(m.target, "id")); got != "65534" {
				t.Fatalf("the setuid-root program run by nobody through the pod's mount has euid %s, want 65534 (nosuid)", got)
			}
			// The control: through the pool's mount, both work.
			pool := f.pool.DataPath(restored.Hash())
			fh, err := os.OpenFile(filepath.Join(pool, "null"), os.O_WRONLY, 0)
			if err != nil {
				t.Fatalf("the device node does not open even through the pool's mount: %v", err)
			}
			fh.Close()
			if got := euidAsNobody(t, filepath.Join(pool, "id")); got != "0" {
				t.Logf("setuid takes no effect on this machine even through the pool's mount (euid %s): the nosuid check above proves little here", got)
			}
		})
	}
}

// euidAsNobody runs the program at path as user nobody and returns the effective
// user ID it reports (`id -u`). The program is passed as an open file and run through
// its /proc/self/fd link, so nobody needs no access to the directories above it,
// and the mount it is run from is the one path was opened through.
func euidAsNobody(t *testing.T, path string) string {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	cmd := exec.Command("/proc/self/fd/3", "-u")
	cmd.ExtraFiles = []*os.File{fh}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("run %s as nobody: %v: %s", path, err, out)
	}
	return strings.TrimSpace(string(out))
}
