package iothrottle_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage/iothrottle"
	"github.com/berth-csi/berth/pkg/storage/podcgroup"
)

const podUID = "5d6c1b2a-3e4f-4a5b-8c7d-9e0f1a2b3c4d"

// versions are the hierarchies with an I/O controller a test can use here.
func versions(t *testing.T) []string {
	testutil.RequireRoot(t)
	var out []string
	if _, err := os.Stat("/sys/fs/cgroup/blkio/cgroup.procs"); err == nil {
		out = append(out, "v1")
	}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		out = append(out, "v2")
	}
	if len(out) == 0 {
		t.Skip("no cgroup hierarchy with an I/O controller on this machine")
	}
	return out
}

// TestSetLiftsAndReaches: limits set for a pod are read back where its container's
// tasks are throttled (the pod's cgroup on v2, also the container's on v1), setting
// them again changes nothing, and zero lifts them.
func TestSetLiftsAndReaches(t *testing.T) {
	for _, version := range versions(t) {
		t.Run(version, func(t *testing.T) {
			cg := testutil.MakeCgroupsOf(t, version, "blkio", "io")
			container := cg.Pod(t, podUID)
			th := iothrottle.New(cg.Root)
			pod, err := th.Find(podUID)
			if err != nil {
				t.Fatal(err)
			}
			if pod != filepath.Dir(container) {
				t.Fatalf("Find = %s, want %s", pod, filepath.Dir(container))
			}
			dev, err := iothrottle.DeviceOf("/proc/self/exe")
			if errors.Is(err, iothrottle.ErrNoDevice) {
				t.Skipf("the test binary lies on no block device: %v", err)
			} else if err != nil {
				t.Fatal(err)
			}
			want := iothrottle.Limits{ReadBPS: 1 << 20, WriteBPS: 2 << 20, ReadIOPS: 100, WriteIOPS: 200}
			for range 2 {
				if err := th.Set(pod, dev, want); err != nil {
					t.Fatal(err)
				}
			}
			check := func(dir string, want iothrottle.Limits) {
				t.Helper()
				got, err := th.Get(dir, dev)
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Errorf("limits of %s = %+v, want %+v", dir, got, want)
				}
			}
			check(pod, want)
			if !cg.V2 {
				check(container, want)
			}
			lowered := iothrottle.Limits{ReadBPS: 1 << 20}
			if err := th.Set(pod, dev, lowered); err != nil {
				t.Fatal(err)
			}
			check(pod, lowered)
			if err := th.Set(pod, dev, iothrottle.Limits{}); err != nil {
				t.Fatal(err)
			}
			check(pod, iothrottle.Limits{})
			if !cg.V2 {
				check(container, iothrottle.Limits{})
			}
		})
	}
}

// TestFindNoPod: a pod without a cgroup is podcgroup.ErrNoPod; a directory outside
// the hierarchy is never written.
func TestFindNoPod(t *testing.T) {
	for _, version := range versions(t) {
		t.Run(version, func(t *testing.T) {
			cg := testutil.MakeCgroupsOf(t, version, "blkio", "io")
			th := iothrottle.New(cg.Root)
			if _, err := th.Find(podUID); !errors.Is(err, podcgroup.ErrNoPod) {
				t.Fatalf("Find of a pod without cgroup = %v, want ErrNoPod", err)
			}
			if err := th.Set(t.TempDir(), iothrottle.Device{Major: 7}, iothrottle.Limits{ReadBPS: 1}); err == nil {
				t.Fatal("Set outside the hierarchy succeeded")
			}
		})
	}
}

// TestDeviceOfNoDevice: a tmpfs has no block device to throttle.
func TestDeviceOfNoDevice(t *testing.T) {
	if _, err := iothrottle.DeviceOf("/dev/shm"); !errors.Is(err, iothrottle.ErrNoDevice) {
		t.Fatalf("DeviceOf(/dev/shm) = %v, want ErrNoDevice", err)
	}
}

func TestStrictest(t *testing.T) {
	a := iothrottle.Limits{ReadBPS: 10, WriteBPS: 0, ReadIOPS: 5}
	b := iothrottle.Limits{ReadBPS: 20, WriteBPS: 7, ReadIOPS: 0}
	if got, want := a.Strictest(b), (iothrottle.Limits{ReadBPS: 10, WriteBPS: 7, ReadIOPS: 5}); got != want {
		t.Fatalf("Strictest = %+v, want %+v", got, want)
	}
}
