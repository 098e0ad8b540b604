package node_test

import (
	"context"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
)

// BenchmarkPublishUnpublish measures one NodePublishVolume + NodeUnpublishVolume pair
// in-process (no gRPC); BenchmarkRawBindUmount measures mount(MS_BIND) + umount of the
// same source and target, so the ratio of the two is the driver's own overhead.
func BenchmarkPublishUnpublish(b *testing.B) {
	testutil.RequireRoot(b)
	f := newFixtureTB(b)
	r := f.createVolume(b, "bench")
	target := f.kubelet + "/pods/bench-target"
	req := &csi.NodePublishVolumeRequest{VolumeId: r.ID, TargetPath: target, VolumeCapability: rwo}
	un := &csi.NodeUnpublishVolumeRequest{VolumeId: r.ID, TargetPath: target}
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if _, err := f.srv.NodePublishVolume(ctx, req); err != nil {
			b.Fatal(err)
		}
		if _, err := f.srv.NodeUnpublishVolume(ctx, un); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPublish times NodePublishVolume alone (mkdir of the target, checks, bind,
// remount); the unpublish between iterations is not timed.
func BenchmarkPublish(b *testing.B) {
	testutil.RequireRoot(b)
	f := newFixtureTB(b)
	r := f.createVolume(b, "bench")
	target := f.kubelet + "/pods/bench-target"
	req := &csi.NodePublishVolumeRequest{VolumeId: r.ID, TargetPath: target, VolumeCapability: rwo}
	un := &csi.NodeUnpublishVolumeRequest{VolumeId: r.ID, TargetPath: target}
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if _, err := f.srv.NodePublishVolume(ctx, req); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if _, err := f.srv.NodeUnpublishVolume(ctx, un); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

func BenchmarkRawBindUmount(b *testing.B) {
	testutil.RequireRoot(b)
	f := newFixtureTB(b)
	r := f.createVolume(b, "bench")
	target := f.kubelet + "/pods/bench-target"
	if err := unix.Mkdir(target, 0o750); err != nil {
		b.Fatal(err)
	}
	src := f.dataPath(r)
	b.ResetTimer()
	for b.Loop() {
		if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
			b.Fatal(err)
		}
		if err := unix.Unmount(target, 0); err != nil {
			b.Fatal(err)
		}
	}
}
