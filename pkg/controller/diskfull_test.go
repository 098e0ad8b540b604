package controller_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

// TestCreateVolumeDiskFull: a clone whose copy meets a full filesystem answers
// ResourceExhausted, not Internal, and the same request succeeds once there is room.
// The pool overcommits and reserves nothing, so only the filesystem refuses.
func TestCreateVolumeDiskFull(t *testing.T) {
	// No root reserve: root, running the test, would write into it.
	mnt := testutil.MountFS(t, testutil.FS{Name: "ext4", Mkfs: []string{"mkfs.ext4", "-q", "-F", "-m", "0"}}, 128<<20)
	pool := dirPool(mnt, "default")
	pool.Overcommit = true
	f := newFixture(t, pool)
	src := f.mustCreate(t, "src")
	// A dir volume's size is accounted, not enforced: 16 MiB of data in a 1 MiB volume.
	if err := os.WriteFile(filepath.Join(f.dataPath(t, src.VolumeId), "blob"), make([]byte, 16<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	req := createReq("clone", 1<<20)
	req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.VolumeId}}}

	filler := filepath.Join(mnt, "filler")
	fill(t, filler, 4<<20)
	_, err := f.srv.CreateVolume(context.Background(), req)
	wantCode(t, err, codes.ResourceExhausted)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	syncFS(t, mnt)
	if _, err := f.srv.CreateVolume(context.Background(), req); err != nil {
		t.Fatalf("CreateVolume with the filler removed: %v", err)
	}
}

// fill preallocates path so that the filesystem keeps only leave bytes free.
func fill(t *testing.T, path string, leave int64) {
	t.Helper()
	syncFS(t, filepath.Dir(path))
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(path), &st); err != nil {
		t.Fatal(err)
	}
	fh, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if err := unix.Fallocate(int(fh.Fd()), 0, 0, int64(st.Bavail)*st.Bsize-leave); err != nil {
		t.Fatalf("fallocate %s: %v", path, err)
	}
}

func syncFS(t *testing.T, dir string) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		t.Fatal(err)
	}
}
