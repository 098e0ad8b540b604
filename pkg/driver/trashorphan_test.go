package driver_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/driver"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
)

// TestTrashOrphan runs `csi-driver trash-orphan` against a real driver on a dir pool
// with real bind mounts: a published volume is refused and stays, an unknown ID is
// refused, and the same volume once unpublished leaves volumes/ for the trash.
func TestTrashOrphan(t *testing.T) {
	testutil.RequireRoot(t)
	base := t.TempDir()
	kubelet := filepath.Join(base, "kubelet")
	if err := os.MkdirAll(filepath.Join(kubelet, "pods"), 0o750); err != nil {
		t.Fatal(err)
	}
	poolPath := filepath.Join(base, "pool")
	sock := filepath.Join(testutil.ShortTempDir(t), "csi.sock")
	conn := startDriver(t, driver.Options{
		Endpoint: sock, NodeID: "n1", DriverName: "berth.csi.io", Mode: driver.ModeAll, KubeletDir: kubelet,
		Config: storage.Config{Pools: []storage.PoolConfig{{Name: "local", Path: poolPath, Kind: storage.KindDir}}},
	})
	ctrl, node := csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	waitProbe(t, csi.NewIdentityClient(conn))
	ctx := context.Background()
	mount := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	vol, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-orphan", VolumeCapabilities: []*csi.VolumeCapability{mount},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}, Parameters: map[string]string{"pool": "local"}})
	if err != nil {
		t.Fatal(err)
	}
	id := vol.GetVolume().GetVolumeId()
	p, err := storage.ParseVolumeID(id)
	if err != nil {
		t.Fatal(err)
	}
	volDir := filepath.Join(poolPath, "volumes", p.Hash)
	trashOrphan := func(volumeID string) (string, error) {
		var out bytes.Buffer
		err := driver.TrashOrphan(ctx, []string{"--endpoint", "unix://" + sock, "--volume-id", volumeID}, &out)
		return out.String(), err
	}

	staging := filepath.Join(kubelet, "plugins", "kubernetes.io", "csi", "berth.csi.io", "x", "globalmount")
	target := filepath.Join(kubelet, "pods", "p1", "volumes", "kubernetes.io~csi", "pv", "mount")
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mount}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: mount}); err != nil {
		t.Fatal(err)
	}
	if _, err := trashOrphan(id); !errors.Is(err, driver.ErrRefused) || !strings.Contains(err.Error(), "published") {
		t.Errorf("trash-orphan of a published volume: %v, want refused as published", err)
	}
	if _, err := os.Stat(volDir); err != nil {
		t.Errorf("published volume touched by a refused trash-orphan: %v", err)
	}

	if _, err := trashOrphan(storage.VolumeID("local", "never-made")); !errors.Is(err, driver.ErrRefused) {
		t.Errorf("trash-orphan of an unknown volume: %v, want refused", err)
	}
	if _, err := trashOrphan(storage.VolumeID("elsewhere", "x")); !errors.Is(err, driver.ErrRefused) {
		t.Errorf("trash-orphan of a pool this driver lacks: %v, want refused", err)
	}

	if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	out, err := trashOrphan(id)
	if err != nil {
		t.Fatalf("trash-orphan of an unpublished volume: %v", err)
	}
	if want := "volume " + id + " moved to the trash of pool local\n"; out != want {
		t.Errorf("output %q, want %q", out, want)
	}
	if _, err := os.Stat(volDir); !os.IsNotExist(err) {
		t.Errorf("volume still in volumes/ after trash-orphan: %v", err)
	}
	if _, err := ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id}); err == nil {
		t.Error("the driver still knows the volume after trash-orphan")
	}
}

// TestTrashOrphanFlags: a missing --volume-id or a stray argument is an error before
// anything is dialled.
func TestTrashOrphanFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"no volume", nil},
		{"stray argument", []string{"--volume-id", "b1-local-00", "extra"}},
		{"bad endpoint", []string{"--volume-id", "b1-local-00", "--endpoint", "tcp://x:1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := driver.TrashOrphan(context.Background(), tc.args, &bytes.Buffer{})
			if err == nil || errors.Is(err, driver.ErrRefused) {
				t.Errorf("TrashOrphan(%q) = %v, want a usage error", tc.args, err)
			}
		})
	}
}
