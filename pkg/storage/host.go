package storage

import (
	"context"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/berth-csi/berth/pkg/mounter"
	"github.com/berth-csi/berth/pkg/storage/iothrottle"
	"github.com/berth-csi/berth/pkg/storage/loop"
	"github.com/berth-csi/berth/pkg/storage/podfreeze"
)

// Host is what the engine asks of the machine besides plain file work in its pools:
// mounts, loop devices, child processes and privileges. The engine receives it, so
// the logic above it can be tested with a fake (internal/fakehost) by a user who is
// not root; RealHost is the machine itself, tested for real as root.
type Host struct {
	Mounts Mounter
	Loops  Loops
	// Run runs every child process of the engine (mount(8), the gluster CLI).
	Run CommandRunner
	// CanGrowMountedExt4 reports whether this process may resize a mounted ext4
	// filesystem (the kernel checks CAP_SYS_RESOURCE for EXT4_IOC_RESIZE_FS).
	CanGrowMountedExt4 func() bool
	// Pods pauses the pods that write to directory volumes while a group snapshot
	// captures them (grouppause.go).
	Pods Pods
	// IO sets the per-pod I/O limits of the pods that publish volumes (nodeio.go).
	IO IOThrottle
}

// IOThrottle finds pods' cgroups in the hierarchy that throttles I/O and sets their
// limits for a device: package iothrottle.
type IOThrottle interface {
	// Find returns the cgroup of the pod with this UID (wrapping
	// podcgroup.ErrNoPod when it has none).
	Find(podUID string) (cgroup string, err error)
	// Set makes l the pod's limits for dev; a zero field lifts that limit.
	Set(cgroup string, dev iothrottle.Device, l iothrottle.Limits) error
}

// Pods finds pods' cgroups and freezes them: package podfreeze.
type Pods interface {
	// Find returns the cgroup of the pod with this UID.
	Find(podUID string) (cgroup string, err error)
	// Freeze freezes the cgroup and waits until all its tasks are frozen, or ctx
	// ends. wasFrozen: someone else froze it before, and it must not be thawed.
	Freeze(ctx context.Context, cgroup string) (wasFrozen bool, err error)
	// Thaw undoes Freeze.
	Thaw(cgroup string) error
}

// Mounter is the mount table and what changes it: package mounter's functions.
type Mounter interface {
	// Bind and BindBlock mount a directory or a device at target, nosuid,nodev.
	Bind(source, target string, o mounter.Options) error
	BindBlock(source, target string, o mounter.Options) error
	// Unmount removes the top-most mount at target (lazily when it is dead).
	Unmount(target string) error
	// IsMountPoint reports a mount at target; a dead one wraps mounter.ErrStale.
	IsMountPoint(target string) (bool, error)
	// At is the top-most mount at target, nil when none.
	At(target string) (*mounter.MountInfo, error)
	// SameSource reports whether mount m shows the directory (or file) path.
	SameSource(m *mounter.MountInfo, path string) (bool, error)
	// All lists the mount table; Locate says what a bind mount of dir shows as its
	// device and root, so binds of dir's subdirectories can be found in it.
	All() ([]*mounter.MountInfo, error)
	Locate(dir string) (major, minor int, root string, err error)
	// FormatAndMount, GrowFS and GrowExt4Offline run the filesystems' own tools.
	FormatAndMount(dev, target, fsType string, options []string) error
	GrowFS(dev, mountPath string) error
	GrowExt4Offline(dev string) error
}

// Loops attaches image files to loop devices: package loop's functions.
type Loops interface {
	// Available is nil when loop devices can be had on this machine.
	Available() error
	Attach(backingFile string, o loop.Options) (*loop.Device, error)
	// Find returns the device backed by the file, nil when none.
	Find(backingFile string) (*loop.Device, error)
	// List returns the devices whose backing files lie under dir.
	List(dir string) ([]*loop.Device, error)
	Detach(d *loop.Device) error
	// DetachFile detaches the device backed by the file, if any.
	DetachFile(backingFile string) error
	// SetCapacity makes a device see its backing file's new size.
	SetCapacity(d *loop.Device) error
	// Size is the size of the block device at path (or of the device bound there).
	Size(path string) (int64, error)
	// DevNumber is the device's major and minor number.
	DevNumber(d *loop.Device) (major, minor int, err error)
}

// RealHost is the machine itself.
func RealHost() Host {
	return Host{Mounts: realMounts{tools: mounter.NewTools()}, Loops: realLoops{}, Run: ExecCommand,
		CanGrowMountedExt4: hasCapSysResource, Pods: podfreeze.New(podfreeze.DefaultRoot), IO: iothrottle.New(podfreeze.DefaultRoot)}
}

// Zero reports whether h is the zero Host, which stands for the machine itself.
func (h Host) Zero() bool {
	return h.Mounts == nil && h.Loops == nil && h.Run == nil && h.CanGrowMountedExt4 == nil && h.Pods == nil && h.IO == nil
}

// resolve returns the real machine for the zero Host, and h itself when it is
// complete. A partial Host is refused: filling its gaps with the real machine
// would let a fake run real mounts or commands unnoticed.
func (h Host) resolve() (Host, error) {
	switch {
	case h.Zero():
		return RealHost(), nil
	case h.Mounts == nil || h.Loops == nil || h.Run == nil || h.CanGrowMountedExt4 == nil || h.Pods == nil || h.IO == nil:
		return Host{}, fmt.Errorf("host: Mounts, Loops, Run, CanGrowMountedExt4, Pods and IO are all required: %w", ErrInvalid)
	}
	return h, nil
}

// realMounts binds by syscall (package mounter) and formats with the filesystems'
// own tools.
type realMounts struct{ tools mounter.Tools }

func (realMounts) Bind(s, t string, o mounter.Options) error      { return mounter.Bind(s, t, o) }
func (realMounts) BindBlock(s, t string, o mounter.Options) error { return mounter.BindBlock(s, t, o) }
func (realMounts) Unmount(t string) error                         { return mounter.Unmount(t) }
func (realMounts) IsMountPoint(t string) (bool, error)            { return mounter.IsMountPoint(t) }
func (realMounts) At(t string) (*mounter.MountInfo, error)        { return mounter.At(t) }
func (realMounts) All() ([]*mounter.MountInfo, error)             { return mounter.All() }
func (m realMounts) GrowFS(dev, path string) error                { return m.tools.GrowFS(dev, path) }
func (m realMounts) GrowExt4Offline(dev string) error             { return m.tools.GrowExt4Offline(dev) }
func (realMounts) SameSource(m *mounter.MountInfo, p string) (bool, error) {
	return mounter.SameSource(m, p)
}
func (realMounts) Locate(dir string) (int, int, string, error) { return mounter.Locate(dir) }
func (m realMounts) FormatAndMount(dev, target, fsType string, options []string) error {
	return m.tools.FormatAndMount(dev, target, fsType, options)
}

type realLoops struct{}

func (realLoops) Available() error {
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return fmt.Errorf("image pools need loop devices: %w", err)
	}
	return nil
}

func (realLoops) Attach(f string, o loop.Options) (*loop.Device, error) { return loop.AttachWith(f, o) }
func (realLoops) Find(f string) (*loop.Device, error)                   { return loop.Find(f) }
func (realLoops) List(dir string) ([]*loop.Device, error)               { return loop.List(dir) }
func (realLoops) Detach(d *loop.Device) error                           { return loop.Detach(d) }
func (realLoops) DetachFile(f string) error                             { return loop.DetachFile(f) }
func (realLoops) SetCapacity(d *loop.Device) error                      { return loop.SetCapacity(d) }
func (realLoops) Size(path string) (int64, error)                       { return loop.Size(path) }
func (realLoops) DevNumber(d *loop.Device) (int, int, error) {
	var st unix.Stat_t
	if err := unix.Stat(d.Path, &st); err != nil {
		return 0, 0, err
	}
	return int(unix.Major(st.Rdev)), int(unix.Minor(st.Rdev)), nil
}

// hasCapSysResource reports whether CAP_SYS_RESOURCE is in the effective set.
func hasCapSysResource() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[0].Effective&(1<<unix.CAP_SYS_RESOURCE) != 0
}
