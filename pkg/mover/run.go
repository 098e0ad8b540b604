package mover

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

// Run lists and watches the VolumeMoves of every namespace and syncs the unfinished
// ones with workers goroutines until ctx ends: several moves at once, each by one
// worker at a time (the work queue never hands out a key being processed). A move
// that waits is synced again after Poll, one whose sync failed with backoff, and
// every one at each listing, every resync. A list and a watch rather than an
// informer: the mover keeps nothing between syncs, and an informer factory would
// bring every API group's listers into the driver binary.
func (m *Mover) Run(ctx context.Context, workers int, resync time.Duration) error {
	logger := klog.FromContext(ctx)
	queue := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, 5*time.Minute),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "volumemoves"})
	logger.Info("Mover started", "driverName", m.Driver, "workers", workers, "resync", resync)

	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for m.work(ctx, queue) {
			}
		})
	}
	failing := false
	for ctx.Err() == nil {
		err := m.listAndWatch(ctx, queue, resync)
		switch {
		case ctx.Err() != nil:
		case err != nil:
			if !failing {
				logger.Error(err, "Cannot watch VolumeMoves; trying again")
			}
			failing = true
			select {
			case <-ctx.Done():
			case <-time.After(m.poll()):
			}
		default:
			failing = false
		}
	}
	queue.ShutDown()
	wg.Wait()
	return nil
}

// listAndWatch queues every unfinished move, then each one that changes, until
// the resync or the end of the watch.
func (m *Mover) listAndWatch(ctx context.Context, queue workqueue.TypedRateLimitingInterface[string], resync time.Duration) error {
	list, err := m.moves().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list VolumeMoves: %w", err)
	}
	for i := range list.Items {
		enqueue(queue, &list.Items[i])
	}
	wctx, cancel := context.WithTimeout(ctx, resync)
	defer cancel()
	w, err := m.moves().Watch(wctx, metav1.ListOptions{ResourceVersion: list.GetResourceVersion()})
	if err != nil {
		if wctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("watch VolumeMoves: %w", err)
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
				if u, ok := ev.Object.(*unstructured.Unstructured); ok {
					enqueue(queue, u)
				}
			case watch.Error:
				err := apierrors.FromObject(ev.Object)
				if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
					return nil
				}
				return fmt.Errorf("watch VolumeMoves: %w", err)
			}
		}
	}
}

// enqueue queues a move unless it is finished (and its finalizer removed).
func enqueue(queue workqueue.TypedRateLimitingInterface[string], u *unstructured.Unstructured) {
	if p, _, _ := unstructured.NestedString(u.Object, "status", "phase"); Phase(p).Finished() && !slices.Contains(u.GetFinalizers(), Finalizer) {
		return
	}
	queue.Add(u.GetNamespace() + "/" + u.GetName())
}

// work syncs one move from the queue; false once the queue is shut down.
func (m *Mover) work(ctx context.Context, queue workqueue.TypedRateLimitingInterface[string]) bool {
	key, quit := queue.Get()
	if quit {
		return false
	}
	defer queue.Done(key)
	ns, name, _ := strings.Cut(key, "/")
	after, err := m.Sync(ctx, ns, name)
	switch {
	case err != nil:
		klog.FromContext(ctx).Error(err, "Move not advanced; trying again", "volumeMove", key)
		queue.AddRateLimited(key)
	case after > 0:
		queue.Forget(key)
		queue.AddAfter(key, after)
	default:
		queue.Forget(key)
	}
	return true
}
