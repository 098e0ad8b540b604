package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/berth-csi/berth/pkg/storage/meta"
	"github.com/berth-csi/berth/pkg/storage/podfreeze"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// A group snapshot is consistent when no member changes between the first member's
// copy and the last one's: every writer is paused for that instant, and the copies
// are reflinks, so the instant is short.
//
//   - An image volume's filesystem is frozen (FIFREEZE on its staging mount):
//     writers block in the kernel, the filesystem is flushed and clean.
//   - A directory volume (dir, quota) is written by pods straight into the pool's
//     filesystem, which cannot be frozen (the reflinks write to it). The pods that
//     publish it read-write on this node are paused instead: their cgroups frozen
//     (package podfreeze), so none of their writes is half done.
//   - A raw block image volume is written through its loop device by the pods that
//     publish it: they are paused, then the device is flushed to the image.
//
// Pods first, filesystems next: a task blocked on a frozen filesystem sleeps
// uninterruptibly, and its cgroup would never report frozen.

// pauseRecordFile lists, in a group's entry under tmp/, the cgroups the group is
// about to freeze: written durably before the first freeze and removed after the
// last thaw, so a driver killed between the two leaves a record that start-up finds
// and thaws (resumeLeftovers). Image freezes have their own records (freeze.go).
const pauseRecordFile = "paused.json"

// podFreezeWait bounds the wait for a pod's cgroup to report frozen (a task in
// uninterruptible sleep holds it back).
const podFreezeWait = 5 * time.Second

type pauseRecord struct {
	Cgroups []string `json:"cgroups"`
}

// writers is what must be paused while a group's members are taken.
type writers struct {
	cgroups []string            // pods' cgroups, sorted
	why     map[string][]string // cgroup -> the members it writes (for logs)
	images  []*groupMember      // image mount members: their filesystems are frozen
	devices []*groupMember      // block members whose devices are flushed
}

// planWriters finds every writer of the members on this node, or says which one
// cannot be paused (ErrPrecondition): a read-write publication that is not a pod's
// (nothing to freeze), a pod whose cgroup cannot be found.
func (e *Engine) planWriters(members []*groupMember) (*writers, error) {
	w := &writers{why: map[string][]string{}}
	for _, m := range members {
		_, isDir := m.pool.backend.Data()
		block := m.src.AccessType == AccessBlock
		if !isDir && !block {
			w.images = append(w.images, m)
			continue
		}
		if block {
			w.devices = append(w.devices, m)
		}
		ids := []string{m.src.ID}
		if pid := m.src.PublicationID(); pid != m.src.ID {
			ids = append(ids, pid)
		}
		for _, id := range ids {
			for _, pub := range e.Publications(id) {
				if pub.ReadOnly {
					continue
				}
				uid, ok := podOfTarget(e.node.kubeletDir, pub.TargetPath)
				if !ok {
					return nil, errorf(ErrPrecondition, "volume %s is published read-write at %s, which is not a pod's volume path under %s: its writer cannot be paused for the group's instant",
						m.src.ID, pub.TargetPath, e.node.kubeletDir)
				}
				cg, err := e.host.Pods.Find(uid)
				if err != nil {
					return nil, errorf(ErrPrecondition, "volume %s is written by pod %s, which cannot be paused for the group's instant: %v", m.src.ID, uid, err)
				}
				if !slices.Contains(w.why[cg], m.src.ID) {
					w.why[cg] = append(w.why[cg], m.src.ID)
				}
			}
		}
	}
	for cg := range w.why {
		w.cgroups = append(w.cgroups, cg)
	}
	slices.Sort(w.cgroups)
	return w, nil
}

// podOfTarget returns the UID of the pod a kubelet publish path is for: a volume's
// mount path (<kubelet>/pods/<uid>/volumes/...) or a block volume's publish path
// (<kubelet>/plugins/kubernetes.io/csi/volumeDevices/publish/<volume>/<uid>).
func podOfTarget(kubeletDir, target string) (string, bool) {
	rel, err := filepath.Rel(kubeletDir, target)
	if err != nil {
		return "", false
	}
	parts := strings.Split(rel, string(filepath.Separator))
	var uid string
	switch {
	case len(parts) >= 3 && parts[0] == "pods":
		uid = parts[1]
	case len(parts) == 7 && strings.Join(parts[:5], "/") == "plugins/kubernetes.io/csi/volumeDevices/publish":
		uid = parts[6]
	default:
		return "", false
	}
	return uid, podfreeze.ValidUID(uid)
}

// pause pauses every writer w names and returns what resumes them, in the reverse
// order. entry is the group's directory under tmp/, where the pause is recorded.
// On error nothing is left paused.
func (e *Engine) pause(ctx context.Context, w *writers, entry string) (resume func(), err error) {
	logger := klog.FromContext(ctx)
	var undo []func()
	undoAll := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	defer func() {
		if err != nil {
			undoAll()
		}
	}()
	if len(w.cgroups) > 0 {
		data, _ := json.Marshal(pauseRecord{Cgroups: w.cgroups})
		if err := meta.WriteNew(filepath.Join(entry, pauseRecordFile), data); err != nil {
			return nil, fmt.Errorf("record the pods to pause: %w", err)
		}
		if err := meta.SyncDir(entry); err != nil {
			return nil, fmt.Errorf("record the pods to pause: %w", err)
		}
		undo = append(undo, func() {
			if err := os.Remove(filepath.Join(entry, pauseRecordFile)); err != nil {
				logger.Error(err, "Cannot remove the record of paused pods")
			}
		})
	}
	fctx, cancel := context.WithTimeout(ctx, podFreezeWait)
	defer cancel()
	for _, cg := range w.cgroups {
		was, err := e.host.Pods.Freeze(fctx, cg)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("pause a pod that writes %s: %w", strings.Join(w.why[cg], ", "), ctx.Err())
			}
			return nil, errorf(ErrNotReady, "cannot pause a pod that writes %s within %s: %v; retry", strings.Join(w.why[cg], ", "), podFreezeWait, err)
		}
		if was {
			continue // paused by someone else, who resumes it
		}
		undo = append(undo, func() {
			if err := e.host.Pods.Thaw(cg); err != nil {
				logger.Error(err, "Cannot resume a pod paused for a group snapshot", "cgroup", cg)
			}
		})
	}
	for _, m := range w.images {
		thaw, err := m.pool.freezeStaged(ctx, m.src)
		if err != nil {
			return nil, errorf(ErrPrecondition, "the filesystem of volume %s cannot be frozen for the group's instant: %v", m.src.ID, err)
		}
		undo = append(undo, thaw)
	}
	for _, m := range w.devices {
		if err := m.pool.flushDevice(m.src); err != nil {
			return nil, fmt.Errorf("volume %s: %w", m.src.ID, err)
		}
	}
	logger.V(4).Info("Group snapshot writers paused", "pods", len(w.cgroups), "filesystems", len(w.images), "devices", len(w.devices))
	return undoAll, nil
}

// flushDevice writes what the page cache of a block volume's loop device holds to
// its image, once its writers are paused. A volume not attached has nothing cached.
func (p *Pool) flushDevice(r *Record) error {
	dev, err := p.host.Loops.Find(p.ImagePath(r.Hash()))
	if err != nil || dev == nil {
		return err
	}
	fd, err := unix.Open(dev.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s to flush it: %w", dev.Path, err)
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("flush %s: %w", dev.Path, err)
	}
	return nil
}

// resumeLeftovers thaws, at start-up, the pods a group snapshot recorded in entry
// (its directory under tmp/) and may have left paused when the driver was killed.
func (p *Pool) resumeLeftovers(ctx context.Context, entry string) {
	logger := klog.FromContext(ctx).WithValues("pool", p.cfg.Name, "entry", filepath.Base(entry))
	var rec pauseRecord
	found, err := readJSON(filepath.Join(entry, pauseRecordFile), &rec)
	if !found {
		return
	}
	if err != nil {
		logger.Error(err, "Unreadable record of pods paused for a group snapshot: they may stay paused")
		return
	}
	for _, cg := range rec.Cgroups {
		if err := p.host.Pods.Thaw(cg); err != nil {
			logger.Error(err, "Cannot resume a pod an interrupted group snapshot paused", "cgroup", cg)
			continue
		}
		logger.Info("Resumed a pod an interrupted group snapshot paused", "cgroup", cg)
	}
}
