package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/proto"
)

// nodeLatencies are the per-iteration latencies of the node bench.
type nodeLatencies struct {
	publish, unpublish, pair []time.Duration
	raw                      []time.Duration // bind mount + unmount, no driver
	rawFull                  []time.Duration // mkdir, bind, remount, unmount, rmdir
	rawPublish, rawUnpublish []time.Duration // rawFull's halves: mkdir…remount, unmount+rmdir
	emptyRPC                 []time.Duration // NodeGetCapabilities: a node call that does nothing
	republish                []time.Duration // NodePublishVolume where the volume is already published
}

// publishLoop creates one volume and publishes and unpublishes it n times
// (after warm iterations that are not recorded) at a target path shaped as
// kubelet makes them. It stages the volume first if the driver asks for it.
//
// Each iteration also runs the two raw floors from rawSrc to targets beside
// the driver's, and an empty call on the same socket: unmount waits for an RCU
// grace period, whose length follows the machine's load, as does a round trip,
// so the floors are sampled with the driver, in turn, not apart.
func publishLoop(ctx context.Context, d *driver, rawSrc string, warm, n int) (lat nodeLatencies, err error) {
	vol, err := d.ctrl.CreateVolume(ctx, createRequest("bench-node-volume"))
	if err != nil {
		return lat, fmt.Errorf("CreateVolume: %w", err)
	}
	id := vol.GetVolume().GetVolumeId()
	defer func() {
		if _, derr := d.ctrl.DeleteVolume(context.WithoutCancel(ctx), &csi.DeleteVolumeRequest{VolumeId: id}); derr != nil && err == nil {
			err = fmt.Errorf("DeleteVolume %s: %w", id, derr)
		}
	}()

	ccaps, err := d.controllerCaps(ctx)
	if err != nil {
		return lat, err
	}
	var publishContext map[string]string
	if ccaps[csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME] {
		resp, err := d.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{
			VolumeId: id, NodeId: d.nodeID, VolumeCapability: mountCapability, VolumeContext: vol.GetVolume().GetVolumeContext(),
		})
		if err != nil {
			return lat, fmt.Errorf("ControllerPublishVolume: %w", err)
		}
		publishContext = resp.GetPublishContext()
	}

	ncaps, err := d.nodeCaps(ctx)
	if err != nil {
		return lat, err
	}
	var staging string
	if ncaps[csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME] {
		staging = filepath.Join(d.kubelet, "plugins", "kubernetes.io", "csi", "berth", "bench", "globalmount")
		if err := os.MkdirAll(staging, 0o750); err != nil {
			return lat, err
		}
		if _, err := d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
			VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCapability,
			PublishContext: publishContext, VolumeContext: vol.GetVolume().GetVolumeContext(),
		}); err != nil {
			return lat, fmt.Errorf("NodeStageVolume: %w", err)
		}
		defer func() {
			if _, uerr := d.node.NodeUnstageVolume(context.WithoutCancel(ctx), &csi.NodeUnstageVolumeRequest{
				VolumeId: id, StagingTargetPath: staging,
			}); uerr != nil && err == nil {
				err = fmt.Errorf("NodeUnstageVolume: %w", uerr)
			}
		}()
	}

	// kubelet creates the parent; the driver creates "mount" itself.
	podVolumes := filepath.Join(d.kubelet, "pods", "00000000-bench", "volumes", "kubernetes.io~csi")
	parent := filepath.Join(podVolumes, "pv-bench")
	rawTgt := filepath.Join(podVolumes, "pv-raw", "mount")
	rawFullTgt := filepath.Join(podVolumes, "pv-raw-full", "mount")
	againTgt := filepath.Join(podVolumes, "pv-bench-again", "mount")
	for _, p := range []string{parent, rawTgt, filepath.Dir(rawFullTgt), filepath.Dir(againTgt)} {
		if err := os.MkdirAll(p, 0o750); err != nil {
			return lat, err
		}
	}
	target := filepath.Join(parent, "mount")
	pub := &csi.NodePublishVolumeRequest{
		VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCapability,
		PublishContext: publishContext, VolumeContext: vol.GetVolume().GetVolumeContext(),
	}
	unpub := &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}

	// A second target stays published throughout, and is published again in
	// turn with the rest: kubelet's call after a restart, which finds the mount
	// already there.
	again := proto.Clone(pub).(*csi.NodePublishVolumeRequest)
	again.TargetPath = againTgt
	if _, err := d.node.NodePublishVolume(ctx, again); err != nil {
		return lat, fmt.Errorf("NodePublishVolume %s: %w", againTgt, err)
	}
	defer func() {
		if _, uerr := d.node.NodeUnpublishVolume(context.WithoutCancel(ctx), &csi.NodeUnpublishVolumeRequest{
			VolumeId: id, TargetPath: againTgt,
		}); uerr != nil && err == nil {
			err = fmt.Errorf("NodeUnpublishVolume %s: %w", againTgt, uerr)
		}
	}()

	lat = nodeLatencies{
		publish:      make([]time.Duration, 0, n),
		unpublish:    make([]time.Duration, 0, n),
		pair:         make([]time.Duration, 0, n),
		raw:          make([]time.Duration, 0, n),
		rawFull:      make([]time.Duration, 0, n),
		rawPublish:   make([]time.Duration, 0, n),
		rawUnpublish: make([]time.Duration, 0, n),
		emptyRPC:     make([]time.Duration, 0, n),
		republish:    make([]time.Duration, 0, n),
	}
	record := false
	steps := []func() error{
		func() error {
			t0 := time.Now()
			if _, err := d.node.NodePublishVolume(ctx, pub); err != nil {
				return fmt.Errorf("NodePublishVolume: %w", err)
			}
			t1 := time.Now()
			if _, err := d.node.NodeUnpublishVolume(ctx, unpub); err != nil {
				return fmt.Errorf("NodeUnpublishVolume: %w", err)
			}
			t2 := time.Now()
			if record {
				lat.publish = append(lat.publish, t1.Sub(t0))
				lat.unpublish = append(lat.unpublish, t2.Sub(t1))
				lat.pair = append(lat.pair, t2.Sub(t0))
			}
			return nil
		},
		func() error {
			raw, err := rawMountFloor(ctx, rawSrc, rawTgt, 1, false)
			if err == nil && record {
				lat.raw = append(lat.raw, raw[0])
			}
			return err
		},
		func() error {
			pub, unpub, err := rawPublishUnpublish(rawSrc, rawFullTgt)
			if err == nil && record {
				lat.rawPublish = append(lat.rawPublish, pub)
				lat.rawUnpublish = append(lat.rawUnpublish, unpub)
				lat.rawFull = append(lat.rawFull, pub+unpub)
			}
			return err
		},
		func() error {
			t0 := time.Now()
			if _, err := d.node.NodePublishVolume(ctx, again); err != nil {
				return fmt.Errorf("NodePublishVolume %s again: %w", againTgt, err)
			}
			if record {
				lat.republish = append(lat.republish, time.Since(t0))
			}
			return nil
		},
		func() error {
			t0 := time.Now()
			if _, err := d.node.NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{}); err != nil {
				return fmt.Errorf("NodeGetCapabilities: %w", err)
			}
			if record {
				lat.emptyRPC = append(lat.emptyRPC, time.Since(t0))
			}
			return nil
		},
	}
	for i := range warm + n {
		record = i >= warm
		// Rotate the order, so that no step always follows the same one.
		for k := range steps {
			if err := steps[(i+k)%len(steps)](); err != nil {
				return lat, fmt.Errorf("iteration %d: %w", i, err)
			}
		}
	}
	return lat, nil
}

// probeLatencies times n Probe calls: the cost of a call on the socket.
func probeLatencies(ctx context.Context, d *driver, n int) ([]time.Duration, error) {
	lat := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if _, err := d.identity.Probe(ctx, &csi.ProbeRequest{}); err != nil {
			return nil, fmt.Errorf("Probe: %w", err)
		}
		lat = append(lat, time.Since(start))
	}
	return lat, nil
}
