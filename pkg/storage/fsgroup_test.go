package storage_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
)

// TestSetGroupOwnership: a volume's tree gets the pod's fsGroup as the kubelet gives
// it (group, g+rw, g+x and setgid on directories), without following a symlink or
// entering a mount point planted in it; a second call, the root being right, walks
// nothing (fsGroupChangePolicy OnRootMismatch).
func TestSetGroupOwnership(t *testing.T) {
	testutil.RequireRoot(t)
	const gid = 4242
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("host"), 0o600); err != nil {
		t.Fatal(err)
	}
	vol := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chmod(vol, 0o700))
	must(os.MkdirAll(filepath.Join(vol, "a", "b"), 0o700))
	must(os.WriteFile(filepath.Join(vol, "a", "b", "file"), []byte("x"), 0o600))
	must(os.WriteFile(filepath.Join(vol, "top"), []byte("x"), 0o4755))
	must(os.Symlink(secret, filepath.Join(vol, "a", "link")))
	must(os.Symlink(outside, filepath.Join(vol, "dirlink")))
	must(unix.Mkfifo(filepath.Join(vol, "fifo"), 0o600))
	must(os.Mkdir(filepath.Join(vol, "bound"), 0o700))
	must(unix.Mount(outside, filepath.Join(vol, "bound"), "", unix.MS_BIND, ""))
	t.Cleanup(func() { testutil.UnmountTree(t, filepath.Join(vol, "bound")) })
	before := lstatT(t, secret)
	rootBefore := lstatT(t, vol)

	// A walk cut short leaves the root as it was, so the next publish walks again.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := storage.SetGroupOwnership(ctx, vol, gid); err == nil {
		t.Fatal("a cancelled walk succeeded")
	}
	if st := lstatT(t, vol); st.Gid != rootBefore.Gid || st.Mode != rootBefore.Mode {
		t.Fatalf("a cancelled walk changed the root: gid %d mode %o", st.Gid, st.Mode)
	}

	changed, err := storage.SetGroupOwnership(context.Background(), vol, gid)
	if err != nil {
		t.Fatal(err)
	}
	if changed != 8 { // vol, a, a/b, a/b/file, top, a/link, dirlink, fifo
		t.Errorf("changed %d entries, want 8", changed)
	}
	for _, tc := range []struct {
		rel  string
		mode uint32 // permission bits wanted (0: a symlink, group only)
	}{
		{".", 0o2770}, {"a", 0o2770}, {"a/b", 0o2770}, {"a/b/file", 0o660}, {"top", 0o775}, {"fifo", 0o660},
		{"a/link", 0}, {"dirlink", 0},
	} {
		st := lstatT(t, filepath.Join(vol, tc.rel))
		if st.Gid != gid {
			t.Errorf("%s: group %d, want %d", tc.rel, st.Gid, gid)
		}
		if tc.mode != 0 && st.Mode&0o7777 != tc.mode {
			t.Errorf("%s: mode %o, want %o", tc.rel, st.Mode&0o7777, tc.mode)
		}
	}
	// Nothing reached through a symlink or the bind mount changed.
	for _, p := range []string{secret, outside} {
		if st := lstatT(t, p); st.Gid == gid {
			t.Errorf("%s outside the volume given the group", p)
		}
	}
	if after := lstatT(t, secret); after.Mode != before.Mode || after.Gid != before.Gid {
		t.Errorf("host file changed: mode %o gid %d, was %o %d", after.Mode, after.Gid, before.Mode, before.Gid)
	}

	// The root is right: nothing is walked, even an entry made wrong since.
	must(os.Chmod(filepath.Join(vol, "a", "b", "file"), 0o600))
	if changed, err := storage.SetGroupOwnership(context.Background(), vol, gid); err != nil || changed != 0 {
		t.Fatalf("second call: %d changed, %v; want 0", changed, err)
	}
	// Another group: everything again.
	if changed, err := storage.SetGroupOwnership(context.Background(), vol, gid+1); err != nil || changed != 8 {
		t.Fatalf("other group: %d changed, %v; want 8", changed, err)
	}
	if st := lstatT(t, filepath.Join(vol, "a", "b", "file")); st.Mode&0o777 != 0o660 || st.Gid != gid+1 {
		t.Errorf("file after the other group: mode %o gid %d", st.Mode&0o777, st.Gid)
	}
}
