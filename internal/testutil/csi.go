package testutil

import (
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// DetachOnCleanup lazily unmounts everything stacked at path when the test ends, pass
// or fail. Call it after the t.TempDir that holds path, so it runs before that
// directory is removed.
func DetachOnCleanup(t testing.TB, path string) {
	t.Helper()
	t.Cleanup(func() {
		for range 16 {
			if err := unix.Unmount(path, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
				return
			}
		}
	})
}

// MountTmpfs mounts a fresh tmpfs of sizeBytes at dir (created if missing) and
// unmounts it at cleanup. The caller must be root (see RequireRoot). A tmpfs gives a
// test a filesystem of known size whose free space nothing else changes.
func MountTmpfs(t testing.TB, dir string, sizeBytes int64) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	DetachOnCleanup(t, dir)
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", sizeBytes)); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
}
