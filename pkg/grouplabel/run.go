package grouplabel

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/klog/v2"
)

// Timing of Run: a listing at least every Resync (a watch ends then, and the
// contents still unlabelled are listed again), RetryAfter after a content whose
// Sync failed, and Backoff after a listing or watch that failed.
type Timing struct {
	Resync     time.Duration
	RetryAfter time.Duration
	Backoff    time.Duration
}

// DefaultTiming: a content that could not be labelled is tried again 10 s later.
var DefaultTiming = Timing{Resync: 10 * time.Minute, RetryAfter: 10 * time.Second, Backoff: 10 * time.Second}

// unlabelled selects the contents nobody has labelled: the others are of no
// concern here, and a labelled content leaves the watch.
func unlabelled() string {
	req, err := labels.NewRequirement(ManagedByLabel, selection.DoesNotExist, nil)
	if err != nil {
		panic(err) // a constant key
	}
	return labels.NewSelector().Add(*req).String()
}

// Run lists the unlabelled VolumeGroupSnapshotContents and VolumeSnapshotContents
// and watches them until ctx ends, syncing each (Sync, SyncMember). A list and a
// watch rather than an informer: the labeller keeps nothing but what it decided of
// each content, and the label selector leaves it the contents not yet taken, a
// handful at any time.
func (l *Labeller) Run(ctx context.Context, t Timing) error {
	klog.FromContext(ctx).Info("Labelling group snapshot contents for this node's csi-snapshotter",
		"node", l.Node, "driverName", l.Driver, "label", ManagedByLabel)
	var wg sync.WaitGroup
	if !l.NoGroups {
		wg.Go(func() { l.watchLoop(ctx, t, "VolumeGroupSnapshotContents", false, l.Contents, l.Sync) })
	}
	wg.Go(func() { l.watchLoop(ctx, t, "VolumeSnapshotContents", true, l.Members, l.SyncMember) })
	wg.Wait()
	return nil
}

type syncFunc func(context.Context, *unstructured.Unstructured) (Outcome, error)

// watchLoop lists and watches what of r is unlabelled until ctx ends.
func (l *Labeller) watchLoop(ctx context.Context, t Timing, what string, members bool, r dynamic.ResourceInterface, syncOne syncFunc) {
	logger := klog.FromContext(ctx)
	failing := false
	for {
		err := l.listAndWatch(ctx, t, what, members, r, syncOne)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			failing = false
			continue
		}
		if !failing {
			logger.Error(err, "Cannot watch "+what+"; trying again", "backoff", t.Backoff)
		}
		failing = true
		select {
		case <-ctx.Done():
			return
		case <-time.After(t.Backoff):
		}
	}
}

// listAndWatch lists, syncs every object, and watches from the listing's version
// until the resync, a retry due, or the watch ends; nil asks for a new listing.
func (l *Labeller) listAndWatch(ctx context.Context, t Timing, what string, members bool, r dynamic.ResourceInterface, syncOne syncFunc) error {
	sel := unlabelled()
	list, err := r.List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return fmt.Errorf("list %s: %w", what, err)
	}
	until := t.Resync
	listed := make(map[types.UID]bool, len(list.Items))
	for i := range list.Items {
		listed[list.Items[i].GetUID()] = true
		if !done(ctx, syncOne, &list.Items[i]) {
			until = t.RetryAfter
		}
	}
	l.keepOnly(members, listed)
	wctx, cancel := context.WithTimeout(ctx, until)
	defer cancel()
	w, err := r.Watch(wctx, metav1.ListOptions{LabelSelector: sel, ResourceVersion: list.GetResourceVersion()})
	if err != nil {
		if wctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("watch %s: %w", what, err)
	}
	defer w.Stop()
	for {
		select {
		case <-wctx.Done():
			return nil
		case ev, ok := <-w.ResultChan():
			if !ok {
				return nil
			}
			switch ev.Type {
			case watch.Added, watch.Modified:
				if c, ok := ev.Object.(*unstructured.Unstructured); ok && !done(ctx, syncOne, c) {
					// Listed again soon, which retries it.
					return nil
				}
			case watch.Deleted:
				if c, ok := ev.Object.(*unstructured.Unstructured); ok {
					l.Forget(c.GetUID())
				}
			case watch.Error:
				err := apierrors.FromObject(ev.Object)
				if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
					return nil
				}
				return fmt.Errorf("watch %s: %w", what, err)
			}
		}
	}
}

// done syncs c and reports whether that is done (false: try again).
func done(ctx context.Context, syncOne syncFunc, c *unstructured.Unstructured) bool {
	_, err := syncOne(ctx, c)
	if err == nil || errors.Is(err, context.Canceled) {
		return true
	}
	klog.FromContext(ctx).Error(err, "Cannot label a content; trying again", "kind", c.GetKind(), "name", c.GetName())
	return false
}
