package node_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/berth-csi/berth/pkg/storage"
)

// groupCap is a mount capability carrying the pod's fsGroup as the kubelet passes it
// to a driver with VOLUME_MOUNT_GROUP.
func groupCap(mode csi.VolumeCapability_AccessMode_Mode, group string) *csi.VolumeCapability {
	c := mountCap(mode)
	c.GetMount().VolumeMountGroup = group
	return c
}

func ownerOf(t *testing.T, path string) (gid, mode uint32) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Gid, st.Mode & 0o7777
}

// TestPublishAppliesMountGroup: a pool volume published with volume_mount_group gets
// the group as the kubelet would have given it (the kubelet no longer does, the node
// having VOLUME_MOUNT_GROUP); a read-only publish changes nothing; a malformed group is
// InvalidArgument, with nothing mounted or changed.
func TestPublishAppliesMountGroup(t *testing.T) {
	f := newFixture(t)
	r := f.createVolume(t, "pvc-group")
	data := f.dataPath(r)
	if err := os.WriteFile(filepath.Join(data, "old"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	gid0, mode0 := ownerOf(t, data)

	for _, bad := range []string{"staff", "-1", "4294967295"} {
		target := f.target(t, "bad")
		_, err := f.srv.NodePublishVolume(context.Background(),
			publishReq(r.ID, target, groupCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, bad), false))
		wantCode(t, err, codes.InvalidArgument)
		if m := mountsUnder(t, f.kubelet); len(m) != 0 {
			t.Fatalf("refused publish left mounts: %v", m)
		}
	}
	ro := f.target(t, "ro")
	f.publish(t, r.ID, ro, groupCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "3000"), true)
	if gid, mode := ownerOf(t, data); gid != gid0 || mode != mode0 {
		t.Fatalf("read-only or refused publishes changed the volume: gid %d mode %o, was %d %o", gid, mode, gid0, mode0)
	}
	if err := f.unpublish(r.ID, ro); err != nil {
		t.Fatal(err)
	}

	target := f.target(t, "pod")
	f.publish(t, r.ID, target, groupCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "3000"), false)
	if gid, mode := ownerOf(t, data); gid != 3000 || mode&0o2770 != 0o2770 {
		t.Fatalf("volume root: gid %d mode %o, want group 3000 with g+rwxs", gid, mode)
	}
	if gid, mode := ownerOf(t, filepath.Join(data, "old")); gid != 3000 || mode != 0o660 {
		t.Fatalf("existing file: gid %d mode %o, want 3000 0660", gid, mode)
	}
	// New files inherit the group through setgid, as the pod's will.
	if err := os.WriteFile(filepath.Join(target, "new"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if gid, _ := ownerOf(t, filepath.Join(data, "new")); gid != 3000 {
		t.Fatalf("new file group %d, want 3000", gid)
	}
	// The same publish again is success.
	f.publish(t, r.ID, target, groupCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "3000"), false)
	if err := f.unpublish(r.ID, target); err != nil {
		t.Fatal(err)
	}
}

// TestAdoptedIgnoresMountGroup: an adopted host directory published for a pod with an
// fsGroup keeps every owner and mode, as a hostPath volume does: before the node
// advertised VOLUME_MOUNT_GROUP, the kubelet rewrote them (fsGroupPolicy File).
func TestAdoptedIgnoresMountGroup(t *testing.T) {
	f := newAdoptFixture(t)
	dir := filepath.Join(f.root, "data")
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "etc-like")
	if err := os.WriteFile(file, []byte("host"), 0o600); err != nil {
		t.Fatal(err)
	}
	dirGID, dirMode := ownerOf(t, dir)
	fileGID, fileMode := ownerOf(t, file)
	target := f.target(t, "pod")
	_, err := f.srv.NodePublishVolume(context.Background(),
		adoptReq(dir, target, groupCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "3000"), false))
	wantCode(t, err, codes.OK)
	if gid, mode := ownerOf(t, dir); gid != dirGID || mode != dirMode {
		t.Errorf("adopted directory: gid %d mode %o, was %d %o", gid, mode, dirGID, dirMode)
	}
	if gid, mode := ownerOf(t, file); gid != fileGID || mode != fileMode {
		t.Errorf("file in the adopted directory: gid %d mode %o, was %d %o", gid, mode, fileGID, fileMode)
	}
	if err := f.unpublish("adopted-data", target); err != nil {
		t.Fatal(err)
	}
}

// TestImagePublishAppliesMountGroup: an image volume's filesystem (ext4, with its
// lost+found) gets the pod's group through its staged mount; the group passed to
// NodeStageVolume too is accepted, and applied by the publish.
func TestImagePublishAppliesMountGroup(t *testing.T) {
	f := newKindFixture(t, storage.KindImage, "")
	r := f.createImage(t, "pvc-group", 64<<20, "ext4")
	staging := f.stagingPath(t, r.Hash())
	t.Cleanup(func() {
		if err := f.unstage(r, staging); err != nil {
			t.Errorf("unstage at cleanup: %v", err)
		}
	})
	vc := groupCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "3000")
	_, err := f.srv.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: r.ID, StagingTargetPath: staging, VolumeCapability: vc})
	wantCode(t, err, codes.OK)
	target := f.target(t, "pod")
	req := publishReq(r.ID, target, vc, false)
	req.StagingTargetPath = staging
	_, err = f.srv.NodePublishVolume(context.Background(), req)
	wantCode(t, err, codes.OK)
	t.Cleanup(func() {
		if err := f.unpublish(r.ID, target); err != nil {
			t.Errorf("unpublish at cleanup: %v", err)
		}
	})
	for _, p := range []string{target, filepath.Join(target, "lost+found")} {
		if gid, mode := ownerOf(t, p); gid != 3000 || mode&0o2770 != 0o2770 {
			t.Errorf("%s: gid %d mode %o, want group 3000 with g+rwxs", p, gid, mode)
		}
	}
}
