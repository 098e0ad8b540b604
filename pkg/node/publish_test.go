package node_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

// TestNodePublishVolumeArguments covers requests refused before anything is mounted.
func TestNodePublishVolumeArguments(t *testing.T) {
	const existing = "<existing>" // replaced by the ID of a volume created for the case
	block := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	noMode := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}}
	tests := []struct {
		name     string
		id       string
		noTarget bool
		vc       *csi.VolumeCapability
		wantCode codes.Code
	}{
		{"missing volume id", "", false, rwo, codes.InvalidArgument},
		{"dot-dot volume id", "../x", false, rwo, codes.InvalidArgument},
		{"volume id with slash", "a/b", false, rwo, codes.InvalidArgument},
		{"volume id with NUL", "b1-default-\x00", false, rwo, codes.InvalidArgument},
		{"volume id of 4 KiB", strings.Repeat("a", 4096), false, rwo, codes.InvalidArgument},
		{"volume id not UTF-8", "b1-\xff", false, rwo, codes.InvalidArgument},
		{"missing target", existing, true, rwo, codes.InvalidArgument},
		{"missing capability", existing, false, nil, codes.InvalidArgument},
		{"capability without access mode", existing, false, noMode, codes.InvalidArgument},
		{"MULTI_NODE_MULTI_WRITER", existing, false, mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER), codes.InvalidArgument},
		{"block on a dir pool", existing, false, block, codes.InvalidArgument},
		{"mount flag suid", existing, false, mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "suid"), codes.InvalidArgument},
		{"mount flag dev", existing, false, mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "dev"), codes.InvalidArgument},
		{"mount flags as one list", existing, false, mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "noexec,suid"), codes.InvalidArgument},
		{"filesystem option", existing, false, mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "uid=0"), codes.InvalidArgument},
		{"unknown Berth volume", unknownID, false, rwo, codes.NotFound},
		{"volume of a pool this node lacks", "b1-elsewhere-0123456789abcdef0123456789abcdef", false, rwo, codes.NotFound},
		{"foreign volume id", "pvc-1234", false, rwo, codes.NotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			id := tc.id
			if id == existing {
				id = f.createVolume(t, "pvc-args").ID
			}
			target := f.target(t, "pod")
			if tc.noTarget {
				target = ""
			}
			_, err := f.srv.NodePublishVolume(context.Background(), publishReq(id, target, tc.vc, false))
			wantCode(t, err, tc.wantCode)
			if m := mountsUnder(t, f.base); len(m) != 0 {
				t.Fatalf("a refused publish left mounts %v", m)
			}
		})
	}
}

// TestNodePublishVolumeTargets covers target paths that must never be mounted on.
func TestNodePublishVolumeTargets(t *testing.T) {
	testutil.RequireRoot(t)
	mkdir := func(t *testing.T, p string) {
		t.Helper()
		if err := os.MkdirAll(p, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	symlink := func(t *testing.T, dst, link string) {
		t.Helper()
		if err := os.Symlink(dst, link); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		// setup prepares the tree under f.base and returns the target path, plus the
		// paths where a mount would show that the driver was fooled.
		setup    func(t *testing.T, f *fixture) (target string, watch []string)
		wantCode codes.Code
	}{
		{"relative path", func(t *testing.T, f *fixture) (string, []string) {
			return "pods/p/volumes/mount", nil
		}, codes.FailedPrecondition},
		{"path with dot-dot", func(t *testing.T, f *fixture) (string, []string) {
			mkdir(t, filepath.Join(f.base, "outside"))
			return f.kubelet + "/pods/../../outside", []string{filepath.Join(f.base, "outside")}
		}, codes.FailedPrecondition},
		{"path with trailing slash", func(t *testing.T, f *fixture) (string, []string) {
			mkdir(t, filepath.Join(f.kubelet, "pods", "p", "mount"))
			return filepath.Join(f.kubelet, "pods", "p", "mount") + "/", []string{filepath.Join(f.kubelet, "pods", "p", "mount")}
		}, codes.FailedPrecondition},
		{"path outside the kubelet dir", func(t *testing.T, f *fixture) (string, []string) {
			p := filepath.Join(f.base, "outside", "mount")
			mkdir(t, filepath.Dir(p))
			return p, []string{p}
		}, codes.FailedPrecondition},
		{"sibling sharing the kubelet dir's prefix", func(t *testing.T, f *fixture) (string, []string) {
			p := filepath.Join(f.kubelet+"-evil", "mount")
			mkdir(t, filepath.Dir(p))
			return p, []string{p}
		}, codes.FailedPrecondition},
		{"the kubelet dir itself", func(t *testing.T, f *fixture) (string, []string) {
			return f.kubelet, []string{f.kubelet}
		}, codes.FailedPrecondition},
		{"root", func(t *testing.T, f *fixture) (string, []string) { return "/", nil }, codes.FailedPrecondition},
		{"symlink as target", func(t *testing.T, f *fixture) (string, []string) {
			out := filepath.Join(f.base, "outside")
			mkdir(t, out)
			p := filepath.Join(f.kubelet, "pods", "p", "mount")
			mkdir(t, filepath.Dir(p))
			symlink(t, out, p)
			return p, []string{out, p}
		}, codes.FailedPrecondition},
		{"symlink inside the kubelet dir as target", func(t *testing.T, f *fixture) (string, []string) {
			in := filepath.Join(f.kubelet, "pods", "p", "real")
			mkdir(t, in)
			p := filepath.Join(f.kubelet, "pods", "p", "mount")
			symlink(t, in, p)
			return p, []string{in, p}
		}, codes.FailedPrecondition},
		{"dangling symlink as target", func(t *testing.T, f *fixture) (string, []string) {
			p := filepath.Join(f.kubelet, "pods", "p", "mount")
			mkdir(t, filepath.Dir(p))
			symlink(t, filepath.Join(f.base, "nowhere"), p)
			return p, []string{p}
		}, codes.FailedPrecondition},
		{"symlinked parent directory", func(t *testing.T, f *fixture) (string, []string) {
			out := filepath.Join(f.base, "outside")
			mkdir(t, filepath.Join(out, "mount"))
			symlink(t, out, filepath.Join(f.kubelet, "pods", "link"))
			return filepath.Join(f.kubelet, "pods", "link", "mount"), []string{filepath.Join(out, "mount")}
		}, codes.FailedPrecondition},
		{"symlinked grandparent directory", func(t *testing.T, f *fixture) (string, []string) {
			out := filepath.Join(f.base, "outside")
			mkdir(t, filepath.Join(out, "volumes"))
			symlink(t, out, filepath.Join(f.kubelet, "pods", "p"))
			return filepath.Join(f.kubelet, "pods", "p", "volumes", "mount"), []string{filepath.Join(out, "volumes", "mount")}
		}, codes.FailedPrecondition},
		{"parent does not exist", func(t *testing.T, f *fixture) (string, []string) {
			p := filepath.Join(f.kubelet, "pods", "missing", "mount")
			return p, []string{p}
		}, codes.FailedPrecondition},
		{"parent is a file", func(t *testing.T, f *fixture) (string, []string) {
			parent := filepath.Join(f.kubelet, "pods", "file")
			if err := os.WriteFile(parent, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(parent, "mount"), nil
		}, codes.FailedPrecondition},
		{"target is a file", func(t *testing.T, f *fixture) (string, []string) {
			p := filepath.Join(f.kubelet, "pods", "p", "mount")
			mkdir(t, filepath.Dir(p))
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return p, []string{p}
		}, codes.FailedPrecondition},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			id := f.createVolume(t, "pvc-target").ID
			target, watch := tc.setup(t, f)
			for _, w := range append(watch, target) {
				if filepath.IsAbs(w) && w != "/" {
					testutil.DetachOnCleanup(t, w)
				}
			}
			_, err := f.srv.NodePublishVolume(context.Background(), publishReq(id, target, rwo, false))
			wantCode(t, err, tc.wantCode)
			for _, w := range watch {
				if isMounted(t, w) {
					t.Errorf("%s is a mount point", w)
				}
			}
			if m := mountsUnder(t, f.base); len(m) != 0 {
				t.Fatalf("a refused publish left mounts %v", m)
			}
			if n := len(f.engine.Publications(id)); n != 0 {
				t.Fatalf("a refused publish recorded %d publications", n)
			}
		})
	}
}

func TestNodePublishVolumeLockHeld(t *testing.T) {
	f := newFixture(t)
	id := f.createVolume(t, "pvc-busy").ID
	target := f.target(t, "pod")
	if !f.locks.TryAcquire(id) {
		t.Fatal("lock already held")
	}
	_, err := f.srv.NodePublishVolume(context.Background(), publishReq(id, target, rwo, false))
	wantCode(t, err, codes.Aborted)
	wantCode(t, f.unpublish(id, target), codes.Aborted)
	if isMounted(t, target) {
		t.Fatal("published while the volume's lock was held")
	}
	f.locks.Release(id)
}
