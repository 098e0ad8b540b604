// Package podfreeze pauses the processes of a Kubernetes pod with the cgroup
// freezer, for the instant a group snapshot captures volumes that the pod writes
// through plain directories, where no filesystem freeze can stop it: a pod's writes
// land in the pool's own filesystem, which the snapshot's reflinks must write too.
//
// A frozen task is stopped where a signal would stop it, outside any system call, so
// once the freezer reports the cgroup frozen no write of the pod is half done: a
// write(2) has completed into the page cache (the reflink flushes it) or not begun.
// The freezer is hierarchical: freezing the pod's cgroup freezes its containers.
//
// Both hierarchies kubelet uses are served: cgroup v2 (cgroup.freeze, cgroup.events)
// when the root holds cgroup.controllers, else the v1 freezer controller mounted at
// <root>/freezer (freezer.state). Pods are found by UID under either cgroup driver
// (package podcgroup).
package podfreeze

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/berth-csi/berth/pkg/storage/podcgroup"
)

// DefaultRoot is where hosts mount their cgroup filesystems.
const DefaultRoot = podcgroup.DefaultRoot

// ErrNoPod is wrapped by Find's error when no cgroup of the pod exists.
var ErrNoPod = podcgroup.ErrNoPod

// Freezer freezes pods' cgroups under one cgroup mount root.
type Freezer struct{ root string }

// New returns a freezer for the cgroup filesystems mounted under root (DefaultRoot
// on a host; in a container, where the host's cgroups are mounted).
func New(root string) *Freezer { return &Freezer{root: root} }

// hierarchy is the directory of the freezer's hierarchy and whether it is v2.
func (f *Freezer) hierarchy() (string, bool, error) {
	return podcgroup.Hierarchy(f.root, "freezer")
}

// ValidUID reports whether uid can be a pod's UID.
func ValidUID(uid string) bool { return podcgroup.ValidUID(uid) }

// Find returns the cgroup directory of the pod with this UID; an error wrapping
// ErrNoPod when there is none (the pod is gone, or kubelet's cgroups lie elsewhere).
func (f *Freezer) Find(uid string) (string, error) {
	if !ValidUID(uid) {
		return "", fmt.Errorf("pod UID %q is not a UID", uid)
	}
	top, _, err := f.hierarchy()
	if err != nil {
		return "", err
	}
	return podcgroup.Find(top, uid)
}

// inside checks that dir is a cgroup below the hierarchy's root, so a path read
// back from a record can never make Freeze or Thaw write elsewhere.
func (f *Freezer) inside(dir string) (bool, error) {
	top, v2, err := f.hierarchy()
	if err != nil {
		return false, err
	}
	return v2, podcgroup.Below(top, dir)
}

// pollStart and pollMax pace the wait for a cgroup to report frozen.
const (
	pollStart = 100 * time.Microsecond
	pollMax   = 10 * time.Millisecond
)

// Freeze freezes the cgroup dir and waits until every task in it is frozen, or ctx
// ends (then the freeze is undone, unless it was there before, and the error says
// so). wasFrozen reports a freeze someone else set before: the caller must then
// leave it, and not Thaw.
func (f *Freezer) Freeze(ctx context.Context, dir string) (wasFrozen bool, err error) {
	v2, err := f.inside(dir)
	if err != nil {
		return false, err
	}
	set, state, want := "freezer.state", "freezer.state", "FROZEN"
	wasFrozen, err = readIs(filepath.Join(dir, "freezer.self_freezing"), "1")
	if v2 {
		set, state, want = "cgroup.freeze", "cgroup.events", "frozen 1"
		wasFrozen, err = readIs(filepath.Join(dir, "cgroup.freeze"), "1")
	}
	if err != nil {
		return false, err
	}
	value := "FROZEN"
	if v2 {
		value = "1"
	}
	if err := write(filepath.Join(dir, set), value); err != nil {
		return wasFrozen, err
	}
	wait := pollStart
	for {
		done, err := readHas(filepath.Join(dir, state), want)
		if err == nil && done {
			return wasFrozen, nil
		}
		if err == nil {
			select {
			case <-ctx.Done():
				err = fmt.Errorf("cgroup %s not frozen yet (a task in uninterruptible sleep?): %w", dir, ctx.Err())
			case <-time.After(wait):
				wait = min(2*wait, pollMax)
				if !v2 {
					// A v1 cgroup stuck FREEZING freezes the tasks it missed when
					// asked again.
					_ = write(filepath.Join(dir, set), value)
				}
				continue
			}
		}
		if !wasFrozen {
			if terr := f.Thaw(dir); terr != nil {
				err = fmt.Errorf("%w (and thawing it again: %v)", err, terr)
			}
		}
		return wasFrozen, err
	}
}

// Thaw undoes Freeze. A cgroup that is gone (its pod ended) needs nothing.
func (f *Freezer) Thaw(dir string) error {
	v2, err := f.inside(dir)
	if err != nil {
		return err
	}
	set, value := "freezer.state", "THAWED"
	if v2 {
		set, value = "cgroup.freeze", "0"
	}
	if err := write(filepath.Join(dir, set), value); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Frozen reports whether the cgroup dir is frozen now (for tests and diagnostics).
func (f *Freezer) Frozen(dir string) (bool, error) {
	v2, err := f.inside(dir)
	if err != nil {
		return false, err
	}
	if v2 {
		return readHas(filepath.Join(dir, "cgroup.events"), "frozen 1")
	}
	return readIs(filepath.Join(dir, "freezer.state"), "FROZEN")
}

func write(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", value, path, err)
	}
	return nil
}

// readIs reports whether the file holds value (one line).
func readIs(path, value string) (bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(string(data)) == value, nil
}

// readHas reports whether one line of the file is line.
func readHas(path, line string) (bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(l) == line {
			return true, nil
		}
	}
	return false, nil
}
