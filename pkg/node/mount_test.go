package node_test

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

func TestNodePublishVolumeWritesReachTheVolume(t *testing.T) {
	testutil.RequireRoot(t)
	f := newFixture(t)
	r := f.createVolume(t, "pvc-rw")
	target := f.target(t, "pod")
	f.publish(t, r.ID, target, rwo, false)

	if err := os.WriteFile(filepath.Join(target, "hello"), []byte("through the target"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(f.dataPath(r), "hello"))
	if err != nil || string(got) != "through the target" {
		t.Fatalf("volume data dir holds %q (err %v)", got, err)
	}
	opts := mountOptions(t, target)
	for _, want := range []string{"rw", "nosuid", "nodev"} {
		if !slices.Contains(opts, want) {
			t.Errorf("mount options %v lack %q", opts, want)
		}
	}
	if got := publications(f.engine, r.ID); !maps.Equal(got, map[string]bool{target: false}) {
		t.Fatalf("publications %v", got)
	}
}

func TestNodePublishVolumeMountFlags(t *testing.T) {
	testutil.RequireRoot(t)
	tests := []struct {
		name     string
		flags    []string
		wantOpts []string
	}{
		{"noexec", []string{"noexec"}, []string{"noexec", "nosuid", "nodev"}},
		{"noatime and nodev", []string{"noatime", "nodev"}, []string{"noatime", "nosuid", "nodev"}},
		{"exec and rw add nothing", []string{"exec", "rw"}, []string{"rw", "nosuid", "nodev"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			r := f.createVolume(t, "pvc-flags")
			target := f.target(t, "pod")
			f.publish(t, r.ID, target, mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, tc.flags...), false)
			opts := mountOptions(t, target)
			for _, want := range tc.wantOpts {
				if !slices.Contains(opts, want) {
					t.Errorf("mount options %v lack %q", opts, want)
				}
			}
		})
	}
}

func TestNodePublishVolumeReadOnly(t *testing.T) {
	testutil.RequireRoot(t)
	tests := []struct {
		name     string
		vc       *csi.VolumeCapability
		readonly bool
	}{
		{"readonly field", rwo, true},
		{"SINGLE_NODE_READER_ONLY", mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY), false},
		{"ro mount flag", mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "ro"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			r := f.createVolume(t, "pvc-ro")
			if err := os.WriteFile(filepath.Join(f.dataPath(r), "existing"), []byte("data"), 0o644); err != nil {
				t.Fatal(err)
			}
			target := f.target(t, "pod")
			f.publish(t, r.ID, target, tc.vc, tc.readonly)
			err := os.WriteFile(filepath.Join(target, "new"), []byte("x"), 0o644)
			if !errors.Is(err, unix.EROFS) {
				t.Fatalf("write through a read-only publish: %v, want EROFS", err)
			}
			if got, err := os.ReadFile(filepath.Join(target, "existing")); err != nil || string(got) != "data" {
				t.Fatalf("read through a read-only publish: %q, %v", got, err)
			}
			if !slices.Contains(mountOptions(t, target), "ro") {
				t.Fatalf("mount options %v lack ro", mountOptions(t, target))
			}
			if got := publications(f.engine, r.ID); !maps.Equal(got, map[string]bool{target: true}) {
				t.Fatalf("publications %v, want %s read-only", got, target)
			}
			// The same request again is the same publish.
			f.publish(t, r.ID, target, tc.vc, tc.readonly)
		})
	}
}

// TestNodePublishVolumeAgain covers a second publish at a target already published:
// the same request is done already; another read-only flag, other mount flags or
// another access mode is AlreadyExists, as the spec says.
func TestNodePublishVolumeAgain(t *testing.T) {
	testutil.RequireRoot(t)
	const snw = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	rwoRO := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY)
	noexec := mountCap(snw, "noexec")
	tests := []struct {
		name          string
		first         *csi.VolumeCapability // nil: rwo
		firstReadOnly bool
		second        func(f *fixture, id, other string) (string, *csi.VolumeCapability, bool)
		wantCode      codes.Code
	}{
		{"same arguments", nil, false, func(_ *fixture, id, _ string) (string, *csi.VolumeCapability, bool) {
			return id, rwo, false
		}, codes.OK},
		{"same arguments read-only", nil, true, func(_ *fixture, id, _ string) (string, *csi.VolumeCapability, bool) {
			return id, rwo, true
		}, codes.OK},
		{"same mount flags", noexec, false, func(_ *fixture, id, _ string) (string, *csi.VolumeCapability, bool) {
			return id, mountCap(snw, "noexec"), false
		}, codes.OK},
		{"flags that add nothing", nil, false, func(_ *fixture, id, _ string) (string, *csi.VolumeCapability, bool) {
			return id, mountCap(snw, "rw", "exec", "nosuid"), false
		}, codes.OK},
		{"now read-only", nil, false, func(_ *fixture, id, _ string) (string, *csi.VolumeCapability, bool) {
			return id, rwo, true
		}, codes.AlreadyExists},
		{"now read-write", nil, true, func(_ *fixture, id, _ string) (string, *csi.VolumeCapability, bool) {
			return id, rwo, false
		}, codes.AlreadyExists},
		{"now reader-only mode", nil, false, func(_ *fixture, id, _ string) (string, *csi.VolumeCapability, bool) {
			return id, rwoRO, false
		}, codes.AlreadyExists},
		{"now with a mount flag", nil, false, func(_ *fixture, id, _ string) (string, *csi.VolumeCapability, bool) {
			return id, noexec, false
		}, codes.AlreadyExists},
		{"now without its mount flag", noexec, false, func(_ *fixture, id, _ string) (string, *csi.VolumeCapability, bool) {
			return id, rwo, false
		}, codes.AlreadyExists},
		{"now another access mode", nil, false, func(_ *fixture, id, _ string) (string, *csi.VolumeCapability, bool) {
			return id, mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER), false
		}, codes.AlreadyExists},
		{"another volume", nil, false, func(_ *fixture, _, other string) (string, *csi.VolumeCapability, bool) {
			return other, rwo, false
		}, codes.FailedPrecondition},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			r := f.createVolume(t, "pvc-again")
			other := f.createVolume(t, "pvc-other")
			target := f.target(t, "pod")
			first := tc.first
			if first == nil {
				first = rwo
			}
			f.publish(t, r.ID, target, first, tc.firstReadOnly)
			id, vc, ro := tc.second(f, r.ID, other.ID)
			_, err := f.srv.NodePublishVolume(context.Background(), publishReq(id, target, vc, ro))
			wantCode(t, err, tc.wantCode)
			if m := mountsUnder(t, f.base); !slices.Equal(m, []string{target}) {
				t.Fatalf("mounts %v, want only %s once", m, target)
			}
			if ro := slices.Contains(mountOptions(t, target), "ro"); ro != tc.firstReadOnly {
				t.Fatalf("mount read-only %t, want %t as first published", ro, tc.firstReadOnly)
			}
			if n := len(f.engine.Publications(other.ID)); n != 0 {
				t.Fatalf("the other volume has %d publications", n)
			}
		})
	}
}

func TestNodePublishVolumeAccessModes(t *testing.T) {
	testutil.RequireRoot(t)
	single := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)
	multi := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER)
	tests := []struct {
		name          string
		first, second *csi.VolumeCapability
		wantCode      codes.Code
	}{
		{"SINGLE_NODE_SINGLE_WRITER twice", single, single, codes.FailedPrecondition},
		{"SINGLE_NODE_SINGLE_WRITER then multi", single, multi, codes.FailedPrecondition},
		{"multi then SINGLE_NODE_SINGLE_WRITER", multi, single, codes.FailedPrecondition},
		{"SINGLE_NODE_MULTI_WRITER twice", multi, multi, codes.OK},
		{"SINGLE_NODE_WRITER twice", rwo, rwo, codes.OK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			r := f.createVolume(t, "pvc-modes")
			t1, t2 := f.target(t, "pod1"), f.target(t, "pod2")
			f.publish(t, r.ID, t1, tc.first, false)
			_, err := f.srv.NodePublishVolume(context.Background(), publishReq(r.ID, t2, tc.second, false))
			wantCode(t, err, tc.wantCode)
			if tc.wantCode != codes.OK {
				if isMounted(t, t2) {
					t.Fatalf("%s mounted although refused", t2)
				}
				if got := publications(f.engine, r.ID); !maps.Equal(got, map[string]bool{t1: false}) {
					t.Fatalf("publications %v", got)
				}
				return
			}
			if err := os.WriteFile(filepath.Join(t1, "shared"), []byte("from pod1"), 0o644); err != nil {
				t.Fatal(err)
			}
			if got, err := os.ReadFile(filepath.Join(t2, "shared")); err != nil || string(got) != "from pod1" {
				t.Fatalf("pod2 reads %q (err %v), want pod1's write", got, err)
			}
			if got := publications(f.engine, r.ID); !maps.Equal(got, map[string]bool{t1: false, t2: false}) {
				t.Fatalf("publications %v", got)
			}
		})
	}
}
