package node_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestNodeUnpublishVolume(t *testing.T) {
	testutil.RequireRoot(t)
	tests := []struct {
		name string
		// setup prepares target for volume id (whose data holds a file "keep").
		setup       func(t *testing.T, f *fixture, id, target string)
		wantCode    codes.Code
		wantRemoved bool // the target path is gone afterwards
	}{
		{"published", func(t *testing.T, f *fixture, id, target string) {
			f.publish(t, id, target, rwo, false)
		}, codes.OK, true},
		{"published read-only", func(t *testing.T, f *fixture, id, target string) {
			f.publish(t, id, target, rwo, true)
		}, codes.OK, true},
		{"unpublished twice", func(t *testing.T, f *fixture, id, target string) {
			f.publish(t, id, target, rwo, false)
			wantCode(t, f.unpublish(id, target), codes.OK)
		}, codes.OK, true},
		{"target never created", func(*testing.T, *fixture, string, string) {}, codes.OK, true},
		{"target dir never mounted", func(t *testing.T, _ *fixture, _, target string) {
			if err := os.Mkdir(target, 0o750); err != nil {
				t.Fatal(err)
			}
		}, codes.OK, true},
		{"non-empty target dir never mounted", func(t *testing.T, _ *fixture, _, target string) {
			if err := os.Mkdir(target, 0o750); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(target, "precious"), []byte("keep me"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, codes.OK, false},
		{"mount removed behind the driver's back", func(t *testing.T, f *fixture, id, target string) {
			f.publish(t, id, target, rwo, false)
			if err := unix.Unmount(target, 0); err != nil {
				t.Fatal(err)
			}
		}, codes.OK, true},
		{"two mounts stacked on the target", func(t *testing.T, f *fixture, id, target string) {
			f.publish(t, id, target, rwo, false)
			if err := unix.Mount(f.base, target, "", unix.MS_BIND, ""); err != nil {
				t.Fatal(err)
			}
		}, codes.OK, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			r := f.createVolume(t, "pvc-unpub")
			data := f.dataPath(r)
			if err := os.WriteFile(filepath.Join(data, "keep"), []byte("volume data"), 0o644); err != nil {
				t.Fatal(err)
			}
			target := f.target(t, "pod")
			tc.setup(t, f, r.ID, target)

			wantCode(t, f.unpublish(r.ID, target), tc.wantCode)
			if isMounted(t, target) {
				t.Fatalf("%s is still mounted", target)
			}
			if m := mountsUnder(t, f.base); len(m) != 0 {
				t.Fatalf("mounts left: %v", m)
			}
			_, err := os.Lstat(target)
			if removed := os.IsNotExist(err); removed != tc.wantRemoved {
				t.Fatalf("target removed %t (lstat: %v), want %t", removed, err, tc.wantRemoved)
			}
			if !tc.wantRemoved {
				if got, err := os.ReadFile(filepath.Join(target, "precious")); err != nil || string(got) != "keep me" {
					t.Fatalf("content of the target: %q, %v", got, err)
				}
			}
			if got, err := os.ReadFile(filepath.Join(data, "keep")); err != nil || string(got) != "volume data" {
				t.Fatalf("volume data after unpublish: %q, %v", got, err)
			}
			if n := len(f.engine.Publications(r.ID)); n != 0 {
				t.Fatalf("%d publications remain", n)
			}
			// Idempotent: once more is success.
			wantCode(t, f.unpublish(r.ID, target), codes.OK)
		})
	}
}

func TestNodeUnpublishVolumeKeepsOtherTargets(t *testing.T) {
	testutil.RequireRoot(t)
	f := newFixture(t)
	r := f.createVolume(t, "pvc-two")
	t1, t2 := f.target(t, "pod1"), f.target(t, "pod2")
	f.publish(t, r.ID, t1, rwo, false)
	f.publish(t, r.ID, t2, rwo, true)
	wantCode(t, f.unpublish(r.ID, t1), codes.OK)
	if isMounted(t, t1) || !isMounted(t, t2) {
		t.Fatalf("after unpublishing %s: mounted %t, %s mounted %t", t1, isMounted(t, t1), t2, isMounted(t, t2))
	}
	if got := publications(f.engine, r.ID); len(got) != 1 || !got[t2] {
		t.Fatalf("publications %v, want only %s read-only", got, t2)
	}
}

func TestNodeUnpublishVolumeArguments(t *testing.T) {
	tests := []struct {
		name     string
		id       string
		target   func(f *fixture) string
		wantCode codes.Code
	}{
		{"missing volume id", "", func(f *fixture) string { return filepath.Join(f.kubelet, "pods", "p", "mount") }, codes.InvalidArgument},
		{"dot-dot volume id", "../x", func(f *fixture) string { return filepath.Join(f.kubelet, "pods", "p", "mount") }, codes.InvalidArgument},
		{"volume id with slash", "a/b", func(f *fixture) string { return filepath.Join(f.kubelet, "pods", "p", "mount") }, codes.InvalidArgument},
		{"volume id with NUL", "a\x00", func(f *fixture) string { return filepath.Join(f.kubelet, "pods", "p", "mount") }, codes.InvalidArgument},
		{"volume id of 4 KiB", strings.Repeat("a", 4096), func(f *fixture) string { return filepath.Join(f.kubelet, "pods", "p", "mount") }, codes.InvalidArgument},
		{"missing target", unknownID, func(*fixture) string { return "" }, codes.InvalidArgument},
		{"relative target", unknownID, func(*fixture) string { return "pods/p/mount" }, codes.FailedPrecondition},
		{"target outside the kubelet dir", unknownID, func(f *fixture) string { return f.base }, codes.FailedPrecondition},
		{"unknown volume, no target", unknownID, func(f *fixture) string { return filepath.Join(f.kubelet, "pods", "p", "mount") }, codes.OK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			wantCode(t, f.unpublish(tc.id, tc.target(f)), tc.wantCode)
			if _, err := os.Stat(f.base); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestNodeUnpublishVolumeNeverFollowsLinks checks that a target reached through a
// symlinked directory never unmounts or removes anything outside the kubelet dir.
func TestNodeUnpublishVolumeNeverFollowsLinks(t *testing.T) {
	testutil.RequireRoot(t)
	tests := []struct {
		name string
		// link is the symlink created inside the kubelet dir, pointing at outside;
		// target is what is unpublished.
		link, target string
	}{
		{"symlinked parent", "pods/link", "pods/link/mnt"},
		{"symlinked grandparent", "pods/link", "pods/link/mnt/inner"},
		{"symlink as target", "pods/p/mount", "pods/p/mount"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			outside := filepath.Join(f.base, "outside")
			// A host mount outside the kubelet dir, reachable through the link.
			victim := filepath.Join(outside, "mnt")
			testutil.MountTmpfs(t, victim, 1<<20)
			if err := os.Mkdir(filepath.Join(victim, "inner"), 0o755); err != nil {
				t.Fatal(err)
			}
			testutil.MountTmpfs(t, filepath.Join(victim, "inner"), 1<<20)
			link := filepath.Join(f.kubelet, tc.link)
			if err := os.MkdirAll(filepath.Dir(link), 0o750); err != nil {
				t.Fatal(err)
			}
			dst := outside
			if tc.link == tc.target {
				dst = victim
			}
			if err := os.Symlink(dst, link); err != nil {
				t.Fatal(err)
			}
			err := f.unpublish(unknownID, filepath.Join(f.kubelet, tc.target))
			if c := status.Code(err); c != codes.OK && c != codes.FailedPrecondition {
				t.Fatalf("got code %s (err %v), want OK or FailedPrecondition", c, err)
			}
			for _, m := range []string{victim, filepath.Join(victim, "inner")} {
				if !isMounted(t, m) {
					t.Errorf("%s outside the kubelet dir was unmounted", m)
				}
			}
			if _, err := os.Lstat(link); err != nil {
				t.Errorf("the symlink itself was removed: %v", err)
			}
		})
	}
}

// TestNodeUnpublishVolumeOfAnotherVolume: an unpublish naming another volume than
// the one at the target unmounts nothing, rather than leave the real owner's
// publication stale. Kubelet's own calls are never refused: a target without a
// mount, and a volume this node does not know (deleted from another host), are
// unpublished as before.
func TestNodeUnpublishVolumeOfAnotherVolume(t *testing.T) {
	testutil.RequireRoot(t)
	tests := []struct {
		name string
		// setup mounts something at target, for which volume id is then unpublished.
		setup       func(t *testing.T, f *fixture, owner, target string) (id string)
		wantCode    codes.Code
		wantMounted bool
	}{
		{"a publication of another volume", func(t *testing.T, f *fixture, owner, target string) string {
			f.publish(t, owner, target, rwo, false)
			return f.createVolume(t, "pvc-asker").ID
		}, codes.FailedPrecondition, true},
		{"a publication of another volume, recovered after a restart", func(t *testing.T, f *fixture, owner, target string) string {
			f.publish(t, owner, target, rwo, false)
			id := f.createVolume(t, "pvc-asker").ID
			*f = *f.restart(t)
			return id
		}, codes.FailedPrecondition, true},
		{"a mount no publication records", func(t *testing.T, f *fixture, _, target string) string {
			testutil.MountTmpfs(t, target, 1<<20)
			return f.createVolume(t, "pvc-asker").ID
		}, codes.FailedPrecondition, true},
		{"another volume's data bound by hand", func(t *testing.T, f *fixture, owner, target string) string {
			r, _ := f.pool.Get(owner[len(owner)-32:])
			if err := os.Mkdir(target, 0o750); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mount(f.dataPath(r), target, "", unix.MS_BIND, ""); err != nil {
				t.Fatal(err)
			}
			return f.createVolume(t, "pvc-asker").ID
		}, codes.FailedPrecondition, true},
		{"its own data bound by hand", func(t *testing.T, f *fixture, _, target string) string {
			r := f.createVolume(t, "pvc-asker")
			if err := os.Mkdir(target, 0o750); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mount(f.dataPath(r), target, "", unix.MS_BIND, ""); err != nil {
				t.Fatal(err)
			}
			return r.ID
		}, codes.OK, false},
		{"a volume this node does not know", func(t *testing.T, f *fixture, _, target string) string {
			testutil.MountTmpfs(t, target, 1<<20)
			return unknownID
		}, codes.OK, false},
		{"nothing mounted", func(t *testing.T, f *fixture, _, target string) string {
			return f.createVolume(t, "pvc-asker").ID
		}, codes.OK, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			owner := f.createVolume(t, "pvc-owner").ID
			target := f.target(t, "pod")
			id := tc.setup(t, f, owner, target)
			err := f.unpublish(id, target)
			wantCode(t, err, tc.wantCode)
			if got := isMounted(t, target); got != tc.wantMounted {
				t.Fatalf("%s mounted %t after the unpublish, want %t", target, got, tc.wantMounted)
			}
			if tc.wantCode != codes.OK && status.Code(err) == codes.FailedPrecondition {
				if pubs := f.engine.Publications(id); len(pubs) != 0 {
					t.Fatalf("the asking volume has publications %v", pubs)
				}
			}
		})
	}
}
