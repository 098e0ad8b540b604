package storage

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/berth-csi/berth/pkg/storage/iothrottle"
	"github.com/berth-csi/berth/pkg/storage/podcgroup"
	"k8s.io/klog/v2"
)

// Per-pod I/O limits (iolimit.go) are kept in the cgroups of the pods that publish
// the volumes: the pod's UID is in its publish path. For each pod and block device
// the node writes the strictest limit, per field, of the pod's volumes on that
// device (several volumes of one pool share the pool's device): a pod's I/O to the
// device is capped as a whole, whichever of those volumes it goes to.
//
// The limits are written at publish (kubelet makes the pod's cgroup before it
// mounts its volumes), when a modification changes them, and removed from the pod
// at unpublish. Writing is idempotent, so a retried publish writes them again. On
// cgroup v1 a limit binds only the tasks of the very cgroup it is written in, and
// the pod's containers get their cgroups after its volumes are mounted: every
// ioResync the limits are written again, into every cgroup of the pod, and after a
// restart the first pass writes them all.

// ioResync is how often the pods' limits are written again (KeepIOLimits).
const ioResync = 5 * time.Second

// publishedInPods lists, for each pod, the volumes published in it (by target).
func (e *Engine) publishedInPods(kubeletDir string) map[string][]string {
	e.pubMu.Lock()
	defer e.pubMu.Unlock()
	out := map[string][]string{}
	for id, m := range e.pubs {
		for target := range m {
			if uid, ok := podOfTarget(kubeletDir, target); ok && !slices.Contains(out[uid], id) {
				out[uid] = append(out[uid], id)
			}
		}
	}
	return out
}

// volumeIO is a volume's I/O limits and, when it names any, its device.
func (n *Node) volumeIO(id string) (iothrottle.Limits, iothrottle.Device, bool, error) {
	if IsAdopted(id) {
		return iothrottle.Limits{}, iothrottle.Device{}, false, nil
	}
	p, r, err := n.volume(id)
	if err != nil {
		return iothrottle.Limits{}, iothrottle.Device{}, false, err
	}
	l, named, err := ioLimits(r)
	if err != nil || !named {
		return l, iothrottle.Device{}, false, err
	}
	b, ok := p.backend.(ioBackend)
	if !ok {
		return l, iothrottle.Device{}, false, nil
	}
	dev, err := b.ioDevice(p, r)
	if err != nil {
		return l, dev, false, fmt.Errorf("device of volume %s: %w", id, err)
	}
	return l, dev, true, nil
}

// syncPodIO writes the limits of the pod's volumes (ids) into its cgroup, and lifts
// those of the devices in also that none of its volumes limits any more. A volume
// whose limits cannot be read fails the call when it is self (the one published or
// modified), and is only logged otherwise: its own calls report it.
func (n *Node) syncPodIO(ctx context.Context, uid string, ids []string, self string, also ...iothrottle.Device) error {
	n.ioMu.Lock()
	defer n.ioMu.Unlock()
	want := map[iothrottle.Device]iothrottle.Limits{}
	for _, d := range also {
		want[d] = iothrottle.Limits{}
	}
	var errs []error
	for _, id := range ids {
		l, dev, ok, err := n.volumeIO(id)
		if err != nil && id == self {
			errs = append(errs, err)
		} else if err != nil {
			klog.FromContext(ctx).V(4).Info("Cannot read the I/O limits of a pod's volume", "podUID", uid, "volumeID", id, "err", err)
		}
		if ok {
			want[dev] = want[dev].Strictest(l)
		}
	}
	if len(want) == 0 {
		return errors.Join(errs...)
	}
	limits := false
	for _, l := range want {
		limits = limits || !l.Zero()
	}
	dir, err := n.e.host.IO.Find(uid)
	if errors.Is(err, podcgroup.ErrNoPod) && !limits {
		return errors.Join(errs...) // the pod is gone: nothing to lift
	}
	if err != nil {
		return errors.Join(append(errs, errorf(ErrPrecondition, "cannot set the I/O limits of pod %s: %v (is --cgroup-root the host's cgroup mount?)", uid, err))...)
	}
	for _, dev := range slices.SortedFunc(maps.Keys(want), func(a, b iothrottle.Device) int {
		return cmp.Or(cmp.Compare(a.Major, b.Major), cmp.Compare(a.Minor, b.Minor))
	}) {
		if err := n.e.host.IO.Set(dir, dev, want[dev]); err != nil {
			errs = append(errs, fmt.Errorf("set the I/O limits of pod %s for device %s: %w", uid, dev, err))
			continue
		}
		klog.FromContext(ctx).V(5).Info("Pod I/O limits set", "podUID", uid, "cgroup", dir, "device", dev.String(), "limits", want[dev])
	}
	return errors.Join(errs...)
}

// publishIO writes the limits of the pod that target is for, once volume id is
// published there. A target that is no pod's (no UID in it) gets none.
func (n *Node) publishIO(ctx context.Context, id, target string) error {
	if _, _, named, err := n.volumeIO(id); err != nil || !named {
		return err
	}
	uid, ok := podOfTarget(n.kubeletDir, target)
	if !ok {
		klog.FromContext(ctx).V(2).Info("Publish path is no pod's: its I/O limits are not applied", "volumeID", id, "targetPath", target)
		return nil
	}
	return n.syncPodIO(ctx, uid, n.e.publishedInPods(n.kubeletDir)[uid], id)
}

// unpublishIO lifts volume id's limits from the pod target was for (keeping those
// of the pod's other volumes on the same device); dev is the volume's device,
// found before it was unpublished. A pod whose cgroup is gone needs nothing.
func (n *Node) unpublishIO(ctx context.Context, target string, dev iothrottle.Device) {
	uid, ok := podOfTarget(n.kubeletDir, target)
	if !ok {
		return
	}
	if err := n.syncPodIO(ctx, uid, n.e.publishedInPods(n.kubeletDir)[uid], "", dev); err != nil {
		klog.FromContext(ctx).Error(err, "Cannot lift the I/O limits of an unpublished volume from its pod", "podUID", uid, "targetPath", target)
	}
}

// modifyIO writes volume id's limits again into every pod that publishes it on
// this node, after a modification changed them (a limit lifted to 0 is removed).
func (n *Node) modifyIO(ctx context.Context, id string) error {
	_, dev, named, err := n.volumeIO(id)
	if err != nil || !named {
		if len(n.e.Publications(id)) == 0 {
			return nil // not published here: its publish will apply them
		}
		return err
	}
	pods := n.e.publishedInPods(n.kubeletDir)
	var errs []error
	for uid, ids := range pods {
		if slices.Contains(ids, id) {
			errs = append(errs, n.syncPodIO(ctx, uid, ids, id, dev))
		}
	}
	return errors.Join(errs...)
}

// KeepIOLimits writes every pod's I/O limits again every ioResync until ctx ends:
// on cgroup v1 this reaches the containers' cgroups, made after the publish.
func (n *Node) KeepIOLimits(ctx context.Context) {
	t := time.NewTicker(ioResync)
	defer t.Stop()
	for {
		for uid, ids := range n.e.publishedInPods(n.kubeletDir) {
			if err := n.syncPodIO(ctx, uid, ids, ""); err != nil {
				klog.FromContext(ctx).V(4).Info("Cannot set a pod's I/O limits again", "podUID", uid, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
