// Package fakehost is an in-memory storage.Host: a mount table, loop devices and a
// command runner that change nothing on the machine, so the engine's node side (and
// the whole node service above it) runs as a user who is not root. The files the
// engine itself creates (pools, records, images, target directories) are real.
//
// The fake answers as the kernel would where the engine can tell: a bind mount shows
// the filesystem and path of what it binds (a directory of the host's own filesystem
// shows device 0:0 and its path; a path under a fake mount shows that mount's device
// and its path inside it), mount and unmount stack at a target, a loop device keeps
// the size its file had when attached until SetCapacity, and a device with a mounted
// filesystem cannot be detached. What a fake filesystem holds is not modelled: a
// mount point stays the empty directory it is on disk.
//
// Every method is safe for concurrent use. Hooks let a test hold a call in progress
// or make it fail, to drive handler logic deterministically.
package fakehost

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/iothrottle"
	"github.com/berth-csi/berth/pkg/storage/loop"
	"github.com/berth-csi/berth/pkg/storage/podfreeze"
)

// Host is a fake machine. The zero value is not usable; call New.
type Host struct {
	devDir string // where the fake's device nodes are named (none is created)

	mu        sync.Mutex
	hooks     Hooks
	ext4Grows bool
	mounts    []*entry // in mount order: later entries cover earlier ones
	nextID    int      // mount IDs
	nextFS    int      // minors of mounted filesystems without a device
	loops     map[int]*device
	fs        map[fileID]*Filesystem // what formatting wrote into each image file
	calls     []Call
}

// New returns a fake machine with an empty mount table and no loop device. Its device
// nodes are named under devDir (a directory the test owns, such as t.TempDir()), so
// no path the engine is handed can reach a real device.
func New(devDir string) *Host {
	return &Host{devDir: abs(devDir), ext4Grows: true, loops: map[int]*device{}, fs: map[fileID]*Filesystem{}}
}

// Host is the storage.Host to build an engine on (storage.NewWithHost).
func (h *Host) Host() storage.Host {
	return storage.Host{Mounts: mounts{h}, Loops: loops{h}, Run: h.run, CanGrowMountedExt4: h.canGrowExt4, Pods: noPods{}, IO: noPods{}}
}

// noPods is the fake machine's cgroups: it runs no pod, so none can be found or
// paused (a group snapshot of a volume a pod writes is refused, as on a machine
// whose cgroups the driver cannot reach).
type noPods struct{}

func (noPods) Find(uid string) (string, error) {
	return "", fmt.Errorf("pod %s: the fake host runs no pods: %w", uid, podfreeze.ErrNoPod)
}

func (noPods) Freeze(context.Context, string) (bool, error) {
	return false, errors.New("the fake host has no cgroups to freeze")
}

func (noPods) Thaw(string) error { return errors.New("the fake host has no cgroups to thaw") }

func (noPods) Set(string, iothrottle.Device, iothrottle.Limits) error {
	return errors.New("the fake host has no cgroups to throttle")
}

// Hooks run first in the fake's methods, outside its lock: a hook may block to hold a
// call in progress, or return an error, which the call then returns having done
// nothing. A nil hook does nothing. Run, when set, also gives the command's output.
type Hooks struct {
	Bind, BindBlock          func(source, target string) error
	Unmount                  func(target string) error
	IsMountPoint, At         func(target string) error
	SameSource               func(path string) error
	All                      func() error
	Locate                   func(dir string) error
	FormatAndMount           func(dev, target, fsType string) error
	GrowFS                   func(dev, mountPath string) error
	GrowExt4Offline          func(dev string) error
	Attach, Find, DetachFile func(backingFile string) error
	List                     func(dir string) error
	Detach, SetCapacity      func(dev string) error
	DevNumber                func(dev string) error
	Size                     func(path string) error
	Run                      func(name string, args ...string) ([]byte, error)
}

// SetHooks replaces the hooks; calls already past their hook are not affected.
func (h *Host) SetHooks(hooks Hooks) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.hooks = hooks
}

// hook returns the hooks in force, for one call.
func (h *Host) hook() Hooks {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.hooks
}

// begin records a call that changes the machine and returns the hooks in force.
func (h *Host) begin(op string, args ...string) Hooks {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, Call{Op: op, Args: args})
	return h.hooks
}

// SetCanGrowMountedExt4 says whether the engine may grow a mounted ext4 filesystem
// (CAP_SYS_RESOURCE on a real machine). It starts true.
func (h *Host) SetCanGrowMountedExt4(v bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ext4Grows = v
}

func (h *Host) canGrowExt4() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ext4Grows
}

// Call is one call that changed the fake machine (or would have: a command), with
// its arguments in the method's order.
type Call struct {
	Op   string
	Args []string
}

// Calls lists the calls made with op ("Bind", "GrowFS", "Run"...), oldest first; all
// of them when op is "". Every call of a method that changes the machine is listed,
// failed or refused by its hook; the methods that only read are not.
func (h *Host) Calls(op string) []Call {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []Call
	for _, c := range h.calls {
		if op == "" || c.Op == op {
			out = append(out, Call{Op: c.Op, Args: slices.Clone(c.Args)})
		}
	}
	return out
}

// run is the fake's CommandRunner: it records the command and answers with the Run
// hook, or with no output and no error.
func (h *Host) run(_ context.Context, name string, args ...string) ([]byte, error) {
	hook := h.begin("Run", append([]string{name}, args...)...).Run
	if hook == nil {
		return nil, nil
	}
	return hook(name, args...)
}

// Devices lists the attached loop devices, by number.
func (h *Host) Devices() []*loop.Device {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*loop.Device
	for _, n := range h.loopNumbers() {
		d := h.loops[n].dev
		out = append(out, &d)
	}
	return out
}
