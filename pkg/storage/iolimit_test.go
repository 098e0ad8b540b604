package storage_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/iothrottle"
	"github.com/berth-csi/berth/pkg/storage/loop"
)

const throttledPod = "7a1e2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b"

// ioCgroupVersion is the hierarchy with an I/O controller the tests use here.
func ioCgroupVersion(t *testing.T) string {
	testutil.RequireRoot(t)
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return "v2"
	}
	if _, err := os.Stat("/sys/fs/cgroup/blkio/cgroup.procs"); err == nil {
		return "v1"
	}
	t.Skip("no cgroup hierarchy with an I/O controller on this machine")
	return ""
}

// throttledSite is a site whose engine throttles the pods of a test cgroup
// hierarchy, with one pod (its cgroup and its container's) made there.
type throttledSite struct {
	*groupSite
	cg             *testutil.Cgroups
	th             *iothrottle.Throttler
	pod, container string
}

func newThrottledSite(t *testing.T, pool storage.PoolConfig) *throttledSite {
	t.Helper()
	cg := testutil.MakeCgroupsOf(t, ioCgroupVersion(t), "blkio", "io")
	container := cg.Pod(t, throttledPod)
	host := storage.RealHost()
	th := iothrottle.New(cg.Root)
	host.IO = th
	return &throttledSite{groupSite: newGroupSite(t, host, pool), cg: cg, th: th, pod: filepath.Dir(container), container: container}
}

// limits checks the limits that the pod's cgroups (its container's too on v1,
// where they are written there) hold for dev.
func (s *throttledSite) limits(dev iothrottle.Device, want iothrottle.Limits) {
	s.t.Helper()
	dirs := []string{s.pod}
	if !s.cg.V2 {
		dirs = append(dirs, s.container)
	}
	for _, dir := range dirs {
		got, err := s.th.Get(dir, dev)
		if err != nil {
			s.t.Fatal(err)
		}
		if got != want {
			s.t.Errorf("limits of %s for %s = %+v, want %+v", dir, dev, got, want)
		}
	}
}

// readDirect reads size bytes of path with O_DIRECT (dd iflag=direct) from a
// process in the pod's container cgroup, and returns how long that took.
func (s *throttledSite) readDirect(path string, size int64) time.Duration {
	s.t.Helper()
	const bs = 64 << 10
	// The shell waits for Start to move it into the cgroup, then becomes dd.
	cmd := exec.Command("sh", "-c", `read _ && exec dd "$@" 2>&1`, "sh", "if="+path, "of=/dev/null",
		"bs=65536", "count="+strconv.FormatInt(size/bs, 10), "iflag=direct")
	var out strings.Builder
	cmd.Stdout = &out
	start := time.Now()
	s.cg.Start(s.t, s.container, cmd)
	if err := cmd.Wait(); err != nil {
		s.t.Fatalf("dd: %v: %s", err, out.String())
	}
	return time.Since(start)
}

// writeSynced writes size bytes to path and flushes them to the device.
func writeSynced(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestIOLimitsThrottlePods: a volume created with a read limit of 1 MiB/s, published
// for a pod, has the limit written into the pod's cgroup for the device its data
// goes through (the pool's device for dir and quota volumes, the loop device for an
// image volume), and a process of the pod's container reading 3 MiB with O_DIRECT
// (from a file, or a raw block volume's device) takes at least about 2 s. A
// modification changes the limit live, one to "0" removes it, and unpublishing
// removes it from the pod. In each kind with I/O limits, on XFS and ext4.
func TestIOLimitsThrottlePods(t *testing.T) {
	cases := []struct {
		name, kind, fsType string
		fs                 testutil.FS
		block              bool // a raw block volume: the loop device is read
	}{
		{name: "quota on xfs", kind: storage.KindQuota, fs: testutil.XFSPrjQuota},
		{name: "dir on xfs", kind: storage.KindDir, fs: testutil.XFSPlain},
		{name: "dir on ext4", kind: storage.KindDir, fs: testutil.Ext4Plain},
		{name: "image ext4 on xfs", kind: storage.KindImage, fs: testutil.XFSPlain, fsType: "ext4"},
		{name: "image block", kind: storage.KindImage, fs: testutil.XFSPlain, block: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.kind == storage.KindQuota {
				testutil.RequireQuotaKernel(t)
			}
			s := newThrottledSite(t, loopPool(t, tc.fs, tc.kind))
			ctx := context.Background()
			access := storage.AccessMount
			if tc.block {
				access = storage.AccessBlock
			}
			r, err := s.pool("default").Create(ctx, storage.CreateRequest{
				Name: "pvc-throttled", RequiredBytes: 32 * mib, AccessType: access, FSType: tc.fsType,
				MutableParameters: map[string]string{storage.ParamReadBytesPerSecond: "1Mi", storage.ParamWriteIOPS: "0"},
			})
			if err != nil {
				t.Fatal(err)
			}
			target := s.publish(r, throttledPod)
			var dev iothrottle.Device
			if tc.kind == storage.KindImage {
				d, err := loop.Find(filepath.Join(s.pool("default").Config().Path, "volumes", r.Hash(), storage.ImageFile))
				if err != nil || d == nil {
					t.Fatalf("loop device of the image: %v", err)
				}
				dev, err = iothrottle.BlockDevice(d.Path)
				if err != nil {
					t.Fatal(err)
				}
			} else if dev, err = iothrottle.DeviceOf(s.pool("default").Config().Path); err != nil {
				t.Fatal(err)
			}
			s.limits(dev, iothrottle.Limits{ReadBPS: 1 << 20})

			file := target // a block volume's device file
			if !tc.block {
				file = filepath.Join(target, "data")
				writeSynced(t, file, 4*mib)
			}
			// A lower bound only: 3 MiB at 1 MiB/s, less what the throttle lets
			// through at once.
			if took := s.readDirect(file, 3*mib); took < 1800*time.Millisecond {
				t.Errorf("reading 3 MiB under a 1 MiB/s limit took %v, want at least ~2 s", took)
			}

			if _, err := s.e.ModifyVolume(ctx, r.ID, map[string]string{storage.ParamReadBytesPerSecond: "2Mi", storage.ParamWriteBytesPerSecond: "10Mi"}); err != nil {
				t.Fatal(err)
			}
			s.limits(dev, iothrottle.Limits{ReadBPS: 2 << 20, WriteBPS: 10 << 20})
			// Lifted: "0" removes each limit (a VolumeAttributesClass cannot drop keys).
			if _, err := s.e.ModifyVolume(ctx, r.ID, map[string]string{storage.ParamReadBytesPerSecond: "0", storage.ParamWriteBytesPerSecond: "0"}); err != nil {
				t.Fatal(err)
			}
			s.limits(dev, iothrottle.Limits{})

			if _, err := s.e.ModifyVolume(ctx, r.ID, map[string]string{storage.ParamReadIOPS: "50"}); err != nil {
				t.Fatal(err)
			}
			s.limits(dev, iothrottle.Limits{ReadIOPS: 50})
			if err := s.n.Unpublish(ctx, r.ID, target); err != nil {
				t.Fatal(err)
			}
			s.limits(dev, iothrottle.Limits{})
		})
	}
}

// TestIOLimitsReachLaterContainers: after a restart the node writes the limits
// again (here lost meanwhile), and a container cgroup made after the publish (as
// kubelet starts containers after mounting volumes) gets them from KeepIOLimits.
func TestIOLimitsReachLaterContainers(t *testing.T) {
	s := newThrottledSite(t, loopPool(t, testutil.XFSPlain, storage.KindDir))
	ctx := context.Background()
	r, err := s.pool("default").Create(ctx, storage.CreateRequest{
		Name: "pvc-later", RequiredBytes: 16 * mib, AccessType: storage.AccessMount,
		MutableParameters: map[string]string{storage.ParamWriteBytesPerSecond: "5Mi"},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.publish(r, throttledPod)
	dev, err := iothrottle.DeviceOf(s.pool("default").Config().Path)
	if err != nil {
		t.Fatal(err)
	}
	want := iothrottle.Limits{WriteBPS: 5 << 20}
	s.limits(dev, want)

	if err := s.th.Set(s.pod, dev, iothrottle.Limits{}); err != nil {
		t.Fatal(err)
	}
	s.restart()
	kctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); s.n.KeepIOLimits(kctx) }()
	defer func() { cancel(); <-done }()
	waitLimits := func(dir string) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			got, err := s.th.Get(dir, dev)
			if err != nil {
				t.Fatal(err)
			}
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s holds %+v, want %+v", dir, got, want)
			}
		}
	}
	waitLimits(s.pod)
	if s.cg.V2 {
		return // the pod's io.max binds its containers already
	}
	waitLimits(s.container)
	later := filepath.Join(s.pod, "later")
	if err := os.Mkdir(later, 0o755); err != nil {
		t.Fatal(err)
	}
	waitLimits(later)
}

// TestIOLimitsRefused: bad values are ErrInvalid naming key and value; a pool whose
// storage lies on no block device (a tmpfs) refuses I/O limits with ErrUnsupported,
// naming the pool and its kind. Nothing is created.
func TestIOLimitsRefused(t *testing.T) {
	ctx := context.Background()
	create := func(s *groupSite, key, value string) error {
		_, err := s.e.Provision(ctx, s.pool("default"), storage.ProvisionRequest{Name: "pvc-refused", RequiredBytes: mib,
			Capabilities: []storage.Capability{mountCap("")}, MutableParameters: map[string]string{key: value}})
		return err
	}
	onDevice := newGroupSite(t, storage.Host{}, loopPool(t, testutil.XFSPlain, storage.KindDir))
	for _, tc := range []struct{ key, value string }{
		{storage.ParamReadBytesPerSecond, "fast"},
		{storage.ParamWriteBytesPerSecond, "-1Mi"},
		{storage.ParamReadIOPS, "1.5"},
		{storage.ParamWriteIOPS, "1Mi"},
	} {
		err := create(onDevice, tc.key, tc.value)
		if !errors.Is(err, storage.ErrInvalid) || !strings.Contains(err.Error(), tc.key) || !strings.Contains(err.Error(), tc.value) {
			t.Errorf("%s=%s: %v, want ErrInvalid naming key and value", tc.key, tc.value, err)
		}
	}
	tmpfs := newGroupSite(t, storage.Host{}, tmpfsPool(t))
	err := create(tmpfs, storage.ParamReadBytesPerSecond, "10Mi")
	if !errors.Is(err, storage.ErrUnsupported) || !strings.Contains(err.Error(), "pool default of kind dir") || !strings.Contains(err.Error(), "tmpfs") {
		t.Errorf("I/O limit on a tmpfs pool: %v, want ErrUnsupported naming pool, kind and filesystem", err)
	}
	if got := tmpfs.pool("default").MutableParams(); len(got) != 0 {
		t.Errorf("a dir pool on a tmpfs has mutable parameters %v", got)
	}
	for _, s := range []*groupSite{onDevice, tmpfs} {
		if vols, err := s.e.VolumesFrom(""); err != nil || len(vols) != 0 {
			t.Errorf("refused creates left %d volumes", len(vols))
		}
	}
}

// TestIOLimitsPublishNeedsPodCgroup: a volume with limits published for a pod whose
// cgroup cannot be found fails (ErrPrecondition) and stays mounted; the retry, once
// the cgroup exists, finds the mount and writes the limits.
func TestIOLimitsPublishNeedsPodCgroup(t *testing.T) {
	s := newThrottledSite(t, loopPool(t, testutil.XFSPlain, storage.KindDir))
	ctx := context.Background()
	r, err := s.pool("default").Create(ctx, storage.CreateRequest{
		Name: "pvc-early", RequiredBytes: 16 * mib, AccessType: storage.AccessMount,
		MutableParameters: map[string]string{storage.ParamReadIOPS: "100"},
	})
	if err != nil {
		t.Fatal(err)
	}
	const uid = "0b9a8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d"
	target := s.targetFor(uid, "pv-early")
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		t.Fatal(err)
	}
	req := storage.PublishRequest{VolumeID: r.ID, TargetPath: target, Capability: mountCap("")}
	t.Cleanup(func() {
		if err := s.n.Unpublish(ctx, r.ID, target); err != nil {
			t.Errorf("unpublish: %v", err)
		}
	})
	if err := s.n.Publish(ctx, req); !errors.Is(err, storage.ErrPrecondition) {
		t.Fatalf("publish for a pod without cgroup: %v, want ErrPrecondition", err)
	}
	if len(s.e.Publications(r.ID)) != 1 {
		t.Fatalf("the refused publish left publications %v, want its mount kept", s.e.Publications(r.ID))
	}
	container := s.cg.Pod(t, uid)
	if err := s.n.Publish(ctx, req); err != nil {
		t.Fatalf("retried publish: %v", err)
	}
	dev, err := iothrottle.DeviceOf(s.pool("default").Config().Path)
	if err != nil {
		t.Fatal(err)
	}
	dirs := []string{filepath.Dir(container)}
	if !s.cg.V2 {
		dirs = append(dirs, container)
	}
	for _, dir := range dirs {
		if got, err := s.th.Get(dir, dev); err != nil || got != (iothrottle.Limits{ReadIOPS: 100}) {
			t.Errorf("limits of %s after the retry: %+v (%v), want readIOPS 100", dir, got, err)
		}
	}
}

// TestIOLimitsStrictestOfPod: two volumes of one pool (one device) in one pod give
// the pod the strictest limit of each field; unpublishing the stricter one leaves
// the other's, and lifting that one removes the device's entry.
func TestIOLimitsStrictestOfPod(t *testing.T) {
	s := newThrottledSite(t, loopPool(t, testutil.XFSPlain, storage.KindDir))
	ctx := context.Background()
	create := func(name string, params map[string]string) *storage.Record {
		r, err := s.pool("default").Create(ctx, storage.CreateRequest{
			Name: name, RequiredBytes: 16 * mib, AccessType: storage.AccessMount, MutableParameters: params,
		})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	a := create("pvc-a", map[string]string{storage.ParamReadBytesPerSecond: "2Mi", storage.ParamWriteIOPS: "10"})
	b := create("pvc-b", map[string]string{storage.ParamReadBytesPerSecond: "1Mi", storage.ParamWriteIOPS: "0"})
	s.publish(a, throttledPod)
	tb := s.publish(b, throttledPod)
	dev, err := iothrottle.DeviceOf(s.pool("default").Config().Path)
	if err != nil {
		t.Fatal(err)
	}
	s.limits(dev, iothrottle.Limits{ReadBPS: 1 << 20, WriteIOPS: 10})
	if err := s.n.Unpublish(ctx, b.ID, tb); err != nil {
		t.Fatal(err)
	}
	s.limits(dev, iothrottle.Limits{ReadBPS: 2 << 20, WriteIOPS: 10})
	if _, err := s.e.ModifyVolume(ctx, a.ID, map[string]string{storage.ParamReadBytesPerSecond: "0", storage.ParamWriteIOPS: "0"}); err != nil {
		t.Fatal(err)
	}
	s.limits(dev, iothrottle.Limits{})
}
