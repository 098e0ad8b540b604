package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// forEach runs do(i) for i in [0, n) on c workers and returns the elapsed
// time. The first error stops the other workers and is returned.
func forEach(ctx context.Context, n, c int, do func(ctx context.Context, i int) error) (time.Duration, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	start := time.Now()
	for range c {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := do(ctx, i); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := context.Cause(ctx); err != nil {
		return 0, err
	}
	return elapsed, nil
}

// createDeletePairs creates and then deletes n volumes named prefix-i, on c
// workers. It returns the elapsed time and the latency of each pair.
func createDeletePairs(ctx context.Context, ctrl csi.ControllerClient, prefix string, n, c int) (time.Duration, []time.Duration, error) {
	lat := make([]time.Duration, n)
	elapsed, err := forEach(ctx, n, c, func(ctx context.Context, i int) error {
		name := fmt.Sprintf("%s-%06d", prefix, i)
		start := time.Now()
		resp, err := ctrl.CreateVolume(ctx, createRequest(name))
		if err != nil {
			return fmt.Errorf("CreateVolume %s: %w", name, err)
		}
		id := resp.GetVolume().GetVolumeId()
		if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			return fmt.Errorf("DeleteVolume %s (%s): %w", id, name, err)
		}
		lat[i] = time.Since(start) // each i belongs to one worker
		return nil
	})
	return elapsed, lat, err
}

// createVolumes creates volumes prefix-from ... prefix-(to-1) on c workers
// and leaves them in place.
func createVolumes(ctx context.Context, ctrl csi.ControllerClient, prefix string, from, to, c int) (time.Duration, error) {
	return forEach(ctx, to-from, c, func(ctx context.Context, i int) error {
		name := fmt.Sprintf("%s-%06d", prefix, from+i)
		if _, err := ctrl.CreateVolume(ctx, createRequest(name)); err != nil {
			return fmt.Errorf("CreateVolume %s: %w", name, err)
		}
		return nil
	})
}
