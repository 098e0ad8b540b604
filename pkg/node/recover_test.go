package node_test

import (
	"context"
	"maps"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/node"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// restart builds a new engine and node service on f's pool and kubelet dir, as the
// driver does after a restart, and runs Recover.
func (f *fixture) restart(t *testing.T) *fixture {
	t.Helper()
	g := startFixture(t, f.base, node.Config{NodeID: testNode, KubeletDir: f.kubelet})
	if err := g.srv.Recover(context.Background()); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	return g
}

func TestRecoverRebuildsPublications(t *testing.T) {
	testutil.RequireRoot(t)
	f := newFixture(t)
	a := f.createVolume(t, "pvc-a")
	b := f.createVolume(t, "pvc-b")
	f.createVolume(t, "pvc-never-published")
	ta1, ta2, tb := f.target(t, "pod1"), f.target(t, "pod2"), f.target(t, "pod3")
	f.publish(t, a.ID, ta1, rwo, false)
	f.publish(t, a.ID, ta2, rwo, true)
	f.publish(t, b.ID, tb, mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY), false)

	g := f.restart(t)
	if got, want := publications(g.engine, a.ID), map[string]bool{ta1: false, ta2: true}; !maps.Equal(got, want) {
		t.Errorf("volume a: publications %v, want %v", got, want)
	}
	if got, want := publications(g.engine, b.ID), map[string]bool{tb: true}; !maps.Equal(got, want) {
		t.Errorf("volume b: publications %v, want %v", got, want)
	}
	if n := len(g.engine.AllVolumes()); n != 3 {
		t.Errorf("%d volumes after restart, want 3", n)
	}
}

func TestRecoverThenServe(t *testing.T) {
	testutil.RequireRoot(t)
	f := newFixture(t)
	r := f.createVolume(t, "pvc-served")
	target := f.target(t, "pod")
	f.publish(t, r.ID, target, rwo, true)

	g := f.restart(t)
	// The same publish is recognised as done; a conflicting one is refused.
	g.publish(t, r.ID, target, rwo, true)
	_, err := g.srv.NodePublishVolume(context.Background(), publishReq(r.ID, target, rwo, false))
	wantCode(t, err, codes.AlreadyExists)
	// Unpublish through the new service forgets the recovered publication.
	wantCode(t, g.unpublish(r.ID, target), codes.OK)
	if isMounted(t, target) {
		t.Fatalf("%s still mounted", target)
	}
	if n := len(g.engine.Publications(r.ID)); n != 0 {
		t.Fatalf("%d publications after unpublish", n)
	}
}

func TestRecoverIgnoresForeignMounts(t *testing.T) {
	testutil.RequireRoot(t)
	f := newFixture(t)
	r := f.createVolume(t, "pvc-foreign")
	target := f.target(t, "pod")
	// A tmpfs at a kubelet target is some other driver's volume.
	testutil.MountTmpfs(t, target, 1<<20)
	g := f.restart(t)
	if n := len(g.engine.Publications(r.ID)); n != 0 {
		t.Fatalf("a foreign mount was recovered as %d publications", n)
	}
}

// TestRecoverThenRepublishWithFlags: after a restart the publication table knows of
// a publish only what the mount table shows. The same request is still done already;
// one asking for flags the mount does not have is AlreadyExists. Once the same
// request has come again, the table knows all of it again (its access mode too).
func TestRecoverThenRepublishWithFlags(t *testing.T) {
	testutil.RequireRoot(t)
	const snw = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	f := newFixture(t)
	r := f.createVolume(t, "pvc-flags")
	target := f.target(t, "pod")
	asked := mountCap(snw, "noexec", "noatime")
	f.publish(t, r.ID, target, asked, false)

	g := f.restart(t)
	for _, tc := range []struct {
		name     string
		vc       *csi.VolumeCapability
		wantCode codes.Code
	}{
		{"another flag", mountCap(snw, "noexec", "noatime", "nodiratime"), codes.AlreadyExists},
		{"another atime policy", mountCap(snw, "noexec", "relatime"), codes.AlreadyExists},
		{"the same request", asked, codes.OK},
		{"another access mode, once known", mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER, "noexec", "noatime"), codes.AlreadyExists},
		{"fewer flags, once known", mountCap(snw, "noexec"), codes.AlreadyExists},
		{"the same request again", asked, codes.OK},
	} {
		_, err := g.srv.NodePublishVolume(context.Background(), publishReq(r.ID, target, tc.vc, false))
		if got := status.Code(err); got != tc.wantCode {
			t.Errorf("%s: code %s (err %v), want %s", tc.name, got, err, tc.wantCode)
		}
	}
	if m := mountsUnder(t, f.base); len(m) != 1 {
		t.Fatalf("mounts %v, want only %s", m, target)
	}
}
