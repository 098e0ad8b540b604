package storage_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/loop"
	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

// groupSite is an engine with its node side, as the driver runs them (group
// snapshots need both), that a test can restart on the same pools.
type groupSite struct {
	t       *testing.T
	pools   []storage.PoolConfig
	host    storage.Host // zero: the real machine
	kubelet string
	e       *storage.Engine
	n       *storage.Node
	stop    func()
}

func newGroupSite(t *testing.T, host storage.Host, pools ...storage.PoolConfig) *groupSite {
	t.Helper()
	kubelet := filepath.Join(t.TempDir(), "kubelet")
	if err := os.MkdirAll(filepath.Join(kubelet, "pods"), 0o750); err != nil {
		t.Fatal(err)
	}
	s := &groupSite{t: t, pools: pools, host: host, kubelet: kubelet}
	s.start()
	t.Cleanup(func() { s.stop() })
	return s
}

// start starts the engine and its node side, and recovers the publications.
func (s *groupSite) start() {
	s.t.Helper()
	e, err := storage.NewWithHost(storage.Config{Pools: s.pools}, s.host)
	if err != nil {
		s.t.Fatal(err)
	}
	n, err := e.Node(storage.NodeConfig{KubeletDir: s.kubelet, NodeID: "node-a"})
	if err != nil {
		s.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logr.Discard()))
	if err := e.Start(ctx); err != nil {
		cancel()
		s.t.Fatal(err)
	}
	if err := n.Recover(ctx); err != nil {
		cancel()
		s.t.Fatal(err)
	}
	var once sync.Once
	s.e, s.n = e, n
	s.stop = func() {
		once.Do(func() {
			for _, p := range s.pools {
				waitEmpty(s.t, filepath.Join(p.Path, "trash"))
			}
			cancel()
			e.Wait()
		})
	}
}

// restart stops the engine and starts a new one on the same pools, as a driver
// restarted after a crash does.
func (s *groupSite) restart() {
	s.t.Helper()
	s.stop()
	s.start()
}

// pool is the engine's pool called name.
func (s *groupSite) pool(name string) *storage.Pool {
	s.t.Helper()
	p, err := s.e.Pool(name)
	if err != nil {
		s.t.Fatal(err)
	}
	return p
}

// mountCap is a filesystem volume used by one node; fsType for images.
func mountCap(fsType string) storage.Capability {
	return storage.Capability{Access: storage.AccessMount, Mode: storage.SingleNodeWriter, FSType: fsType}
}

// targetFor is where kubelet publishes volume pv for the pod with uid.
func (s *groupSite) targetFor(uid, pv string) string {
	return filepath.Join(s.kubelet, "pods", uid, "volumes", "kubernetes.io~csi", pv, "mount")
}

// publish stages (images) and publishes volume r for the pod with uid at the path
// kubelet gives that pod's volume (a mount directory, or a block volume's device
// file), and undoes both at cleanup (detaching the image's loop device even when
// that fails).
func (s *groupSite) publish(r *storage.Record, uid string) string {
	s.t.Helper()
	ctx := context.Background()
	c := mountCap(r.FSType)
	pv := "pv-" + r.Hash()[:8]
	staging := filepath.Join(s.kubelet, "plugins", "kubernetes.io", "csi", "berth.csi.io", r.Hash(), "globalmount")
	target := s.targetFor(uid, pv)
	if r.AccessType == storage.AccessBlock {
		c = storage.Capability{Access: storage.AccessBlock, Mode: storage.SingleNodeWriter}
		staging = filepath.Join(s.kubelet, "plugins", "kubernetes.io", "csi", "volumeDevices", "staging", pv)
		target = filepath.Join(s.kubelet, "plugins", "kubernetes.io", "csi", "volumeDevices", "publish", pv, uid)
	}
	for _, d := range []string{staging, filepath.Dir(target)} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			s.t.Fatal(err)
		}
	}
	if err := s.n.Stage(ctx, storage.StageRequest{VolumeID: r.ID, StagingPath: staging, Capability: c}); err != nil {
		s.t.Fatalf("stage %s: %v", r.ID, err)
	}
	image := filepath.Join(s.poolOf(r).Config().Path, "volumes", r.Hash(), storage.ImageFile)
	s.t.Cleanup(func() {
		if err := s.n.Unstage(ctx, r.ID, staging); err != nil {
			s.t.Errorf("unstage %s: %v", r.ID, err)
		}
		_ = loop.DetachFile(image)
	})
	if err := s.n.Publish(ctx, storage.PublishRequest{VolumeID: r.ID, StagingPath: staging, TargetPath: target, Capability: c}); err != nil {
		s.t.Fatalf("publish %s: %v", r.ID, err)
	}
	s.t.Cleanup(func() {
		if err := s.n.Unpublish(ctx, r.ID, target); err != nil {
			s.t.Errorf("unpublish %s: %v", r.ID, err)
		}
	})
	return target
}

func (s *groupSite) poolOf(r *storage.Record) *storage.Pool { return s.pool(r.Pool) }

// create creates a mount volume of size bytes in pool (fsType for images).
func (s *groupSite) create(pool, name, fsType string, size int64) *storage.Record {
	s.t.Helper()
	r, err := s.pool(pool).Create(context.Background(), storage.CreateRequest{
		Name: name, RequiredBytes: size, AccessType: storage.AccessMount, FSType: fsType,
	})
	if err != nil {
		s.t.Fatalf("create %s: %v", name, err)
	}
	return r
}

// restore creates volume name from snapshot snap, as a restore keeps its source's
// filesystem.
func (s *groupSite) restore(name string, snap *storage.Snapshot) *storage.Record {
	s.t.Helper()
	r, err := s.pool(snap.Pool).Create(context.Background(), storage.CreateRequest{
		Name: name, RequiredBytes: snap.SizeBytes, AccessType: snap.AccessType, FSType: snap.FSType,
		Source: &storage.Source{Kind: storage.SourceSnapshot, ID: snap.ID},
	})
	if err != nil {
		s.t.Fatalf("restore %s from %s: %v", name, snap.ID, err)
	}
	return r
}

// group takes group snapshot name of volumes.
func (s *groupSite) group(ctx context.Context, name string, volumes ...*storage.Record) (*storage.GroupSnapshot, error) {
	var ids []string
	for _, v := range volumes {
		ids = append(ids, v.ID)
	}
	return s.e.CreateGroupSnapshot(ctx, name, ids)
}

func (s *groupSite) mustGroup(name string, volumes ...*storage.Record) *storage.GroupSnapshot {
	s.t.Helper()
	g, err := s.group(context.Background(), name, volumes...)
	if err != nil {
		s.t.Fatalf("group snapshot %s: %v", name, err)
	}
	return g
}

// memberOf is the snapshot of volume v in group g.
func memberOf(t *testing.T, g *storage.GroupSnapshot, v *storage.Record) *storage.Snapshot {
	t.Helper()
	for _, s := range g.Snapshots {
		if s.SourceVolumeID == v.ID {
			return s
		}
	}
	t.Fatalf("group snapshot %s has no snapshot of %s", g.ID, v.ID)
	return nil
}

// groupLog collects what the engine logs (up to V(4)) under a context, one line
// per message with its key/value pairs, in order.
type groupLog struct{ testutil.LogLines }

func (l *groupLog) ctx() context.Context {
	return klog.NewContext(context.Background(), l.Logger(4))
}

// find returns the indexes of the lines with message msg that hold every one of
// the values.
func (l *groupLog) find(msg string, values ...string) []int {
	var out []int
	for i, line := range l.Lines() {
		if !strings.Contains(line, fmt.Sprintf("%q=%q", "msg", msg)) {
			continue
		}
		all := true
		for _, v := range values {
			all = all && strings.Contains(line, v)
		}
		if all {
			out = append(out, i)
		}
	}
	return out
}
