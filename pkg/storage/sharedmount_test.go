package storage_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/fakehost"
	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/pkg/mounter"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

// A shared pool whose mount is gone under a running engine, over the fake host. What
// the pool's filesystem holds is the real directory at the pool path while it is
// mounted there, and is moved aside ("remote") while it is not: the path then shows
// the empty local directory beneath, as the kernel would. A killed filesystem stays
// in place (the fake reports it dead through the mount table only), so whatever an
// operation would write on it shows as a change of its content.

const fakeSource = "gluster.example:/gv0"

type outage struct {
	fh      *fakehost.Host
	e       *storage.Engine
	node    *storage.Node
	shared  *storage.Pool // "sh": operator-mounted, or mounted by the engine (source)
	local   *storage.Pool // "local": a dir pool beside it
	path    string        // the shared pool's path
	remote  string        // the filesystem's content while it is not mounted at path
	kubelet string

	mounted atomic.Bool // the filesystem is mounted at path (its content is there)
	refuse  atomic.Bool // mount(8) fails, as with its server unreachable
	// refuseOutput, when set, is what a failing mount(8) prints.
	refuseOutput atomic.Pointer[string]
	hold         atomic.Bool  // the path looks dead to the engine, whatever is there
	mounts       atomic.Int32 // mount(8) runs
	// afterMount, when set, runs once the filesystem is mounted, before the engine
	// can see it (what other hosts did while it was not mounted here).
	afterMount atomic.Pointer[func()]
}

// startOutage starts an engine on a shared pool (with a source: the engine mounts it
// through mount(8), which the fake answers by mounting; without: mounted here, as an
// operator would) and a dir pool, and its node side, retrying unserved pools every
// retry (0: the default, 30s, so never within a test).
func startOutage(t *testing.T, source bool, retry time.Duration) *outage {
	t.Helper()
	base := t.TempDir()
	o := &outage{
		fh: fakehost.New(filepath.Join(base, "dev")), path: filepath.Join(base, "shared"),
		remote: filepath.Join(base, "remote"), kubelet: filepath.Join(base, "kubelet"),
	}
	for _, d := range []string{o.path, o.remote, filepath.Join(o.kubelet, "pods")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	o.fh.SetHooks(fakehost.Hooks{
		IsMountPoint: func(target string) error {
			if target == o.path && o.hold.Load() {
				return fmt.Errorf("%w: held by the test", mounter.ErrStale)
			}
			return nil
		},
		Unmount: func(target string) error {
			if target == o.path && o.mounted.Load() {
				return o.aside()
			}
			return nil
		},
		Run: func(name string, args ...string) ([]byte, error) {
			if name != "mount" {
				return nil, nil
			}
			o.mounts.Add(1)
			if o.refuse.Load() {
				out := "Mounting glusterfs on " + o.path + " failed."
				if s := o.refuseOutput.Load(); s != nil {
					out = *s
				}
				// As ExecCommand reports it: the command line and the output.
				return []byte(out), fmt.Errorf("mount %s: exit status 1: %s", strings.Join(args, " "), out)
			}
			return nil, o.mount()
		},
	})
	cfg := storage.PoolConfig{Name: "sh", Path: o.path, Kind: storage.KindShared}
	if source {
		cfg.Source, cfg.FSType = fakeSource, "glusterfs"
	} else if err := o.mount(); err != nil {
		t.Fatal(err)
	}
	o.e = testengine.StartWith(t, storage.Config{Pools: []storage.PoolConfig{
		cfg, {Name: "local", Path: filepath.Join(base, "local"), Kind: storage.KindDir},
	}}, testengine.Options{Host: o.fh.Host(), PoolRetry: retry, Before: func(e *storage.Engine) {
		n, err := e.Node(storage.NodeConfig{KubeletDir: o.kubelet, NodeID: "node-a"})
		if err != nil {
			t.Fatal(err)
		}
		o.node = n
	}})
	if err := o.e.Unserved(); err != nil {
		t.Fatalf("pool not served at start: %v", err)
	}
	o.shared, _ = o.e.Pool("sh")
	o.local, _ = o.e.Pool("local")
	return o
}

// mount brings the filesystem's content back to the path, which must be the empty
// directory it was left as, and mounts it there.
func (o *outage) mount() error {
	o.hold.Store(true)
	defer o.hold.Store(false)
	if err := os.Remove(o.path); err != nil {
		return err // not empty: something was written on the local disk
	}
	if err := os.Rename(o.remote, o.path); err != nil {
		return err
	}
	if err := o.fh.MountFS(fakeSource, o.path, "glusterfs"); err != nil {
		return err
	}
	o.mounted.Store(true)
	if f := o.afterMount.Swap(nil); f != nil {
		(*f)()
	}
	return nil
}

// aside takes the content away from the path, as an unmount would hide it.
func (o *outage) aside() error {
	if err := os.Rename(o.path, o.remote); err != nil {
		return err
	}
	o.mounted.Store(false)
	return os.Mkdir(o.path, 0o700)
}

// unmount unmounts the pool's filesystem under the engine.
func (o *outage) unmount(t *testing.T) {
	t.Helper()
	if err := o.fh.Host().Mounts.Unmount(o.path); err != nil {
		t.Fatal(err)
	}
}

// kill makes the pool's filesystem stop answering (its FUSE client killed).
func (o *outage) kill(t *testing.T) {
	t.Helper()
	if err := o.fh.Kill(o.path); err != nil {
		t.Fatal(err)
	}
}

// content lists what the pool's filesystem holds, wherever it is.
func (o *outage) content(t *testing.T) []string {
	t.Helper()
	if o.mounted.Load() {
		return tree(t, o.path)
	}
	return tree(t, o.remote)
}

// tree lists every path under dir, relative to it.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path != dir {
			rel, _ := filepath.Rel(dir, path)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var sharedCap = storage.Capability{Access: storage.AccessMount, Mode: storage.MultiNodeMultiWriter}

// populate gives the shared pool a volume, a ready snapshot of it and an entry in
// its trash, as a pool in use has.
func (o *outage) populate(t *testing.T) (*storage.Record, *storage.Snapshot) {
	t.Helper()
	ctx := quiet()
	vol := mustCreate(t, o.shared, "pvc-1", mib)
	writeFile(t, filepath.Join(o.shared.DataPath(vol.Hash()), "file"), "data")
	s, err := o.shared.CreateSnapshot(ctx, "snap-1", vol.Hash())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(purgeTimeout)
	for !s.Ready {
		if time.Now().After(deadline) {
			t.Fatalf("snapshot %s not ready after %v", s.ID, purgeTimeout)
		}
		time.Sleep(10 * time.Millisecond)
		if s, err = o.shared.Snapshot(s.Hash()); err != nil {
			t.Fatal(err)
		}
	}
	// The copy releases the snapshot's lock just after it commits.
	waitEmpty(t, filepath.Join(o.path, "locks"))
	// A deleted volume whose purge is due: another host's, which the purger of
	// every host may remove.
	writeFile(t, filepath.Join(o.path, "trash", "0123456789abcdef0123456789abcdef.0123", "data", "f"), "deleted")
	return vol, s
}

func quiet() context.Context {
	return klog.NewContext(context.Background(), logr.Discard())
}

// TestDeadSharedMount: when a shared pool's mount is gone (unmounted under the
// driver, or dead), the first operation of any kind on the pool answers ErrNotReady
// naming the pool and its path, writes nothing (neither on the local disk beneath the
// path nor on the filesystem), and the pool is reported unserved; a pool with a
// source whose remount fails is left the same way. The dir pool beside it serves.
func TestDeadSharedMount(t *testing.T) {
	outages := []struct {
		name   string
		source bool
		brk    func(o *outage, t *testing.T)
	}{
		{"operator-mounted, unmounted", false, (*outage).unmount},
		{"operator-mounted, dead", false, (*outage).kill},
		{"source, unmounted, remount fails", true, func(o *outage, t *testing.T) { o.refuse.Store(true); o.unmount(t) }},
		{"source, dead, remount fails", true, func(o *outage, t *testing.T) { o.refuse.Store(true); o.kill(t) }},
	}
	type op func(ctx context.Context, o *outage, vol *storage.Record, snap *storage.Snapshot) error
	staging := func(o *outage) string { return filepath.Join(o.kubelet, "pods", "staging") }
	ops := []struct {
		name   string
		do     op
		answer bool // the operation answers an error (the others must still not serve)
	}{
		{"Volume (ControllerGetVolume, lookups)", func(_ context.Context, o *outage, vol *storage.Record, _ *storage.Snapshot) error {
			_, _, err := o.e.Volume(vol.ID)
			return err
		}, true},
		{"DeleteVolume", func(ctx context.Context, o *outage, vol *storage.Record, _ *storage.Snapshot) error {
			return o.e.DeleteVolume(ctx, vol.ID)
		}, true},
		{"DeleteVolume of an unknown volume", func(ctx context.Context, o *outage, _ *storage.Record, _ *storage.Snapshot) error {
			return o.e.DeleteVolume(ctx, storage.VolumeID("sh", "pvc-never"))
		}, true},
		{"Provision", func(ctx context.Context, o *outage, _ *storage.Record, _ *storage.Snapshot) error {
			_, err := o.e.Provision(ctx, o.shared, storage.ProvisionRequest{
				Name: "pvc-new", RequiredBytes: mib, Capabilities: []storage.Capability{sharedCap},
				Parameters: map[string]string{"pool": "sh"},
			})
			return err
		}, true},
		{"Expand", func(ctx context.Context, o *outage, vol *storage.Record, _ *storage.Snapshot) error {
			_, err := o.shared.Expand(ctx, vol.Hash(), 2*mib, 0)
			return err
		}, true},
		{"CreateSnapshot", func(ctx context.Context, o *outage, vol *storage.Record, _ *storage.Snapshot) error {
			_, err := o.shared.CreateSnapshot(ctx, "snap-new", vol.Hash())
			return err
		}, true},
		{"DeleteSnapshot", func(ctx context.Context, o *outage, _ *storage.Record, s *storage.Snapshot) error {
			return o.e.DeleteSnapshot(ctx, s.ID)
		}, true},
		{"Snapshot (lookup)", func(_ context.Context, o *outage, _ *storage.Record, s *storage.Snapshot) error {
			_, err := o.shared.Snapshot(s.Hash())
			return err
		}, true},
		{"ListSnapshots by ID", func(_ context.Context, o *outage, _ *storage.Record, s *storage.Snapshot) error {
			_, err := o.e.SnapshotsFrom("", storage.SnapshotFilter{SnapshotID: s.ID})
			return err
		}, true},
		{"Capacity (rescan)", func(_ context.Context, o *outage, _ *storage.Record, _ *storage.Snapshot) error {
			_, _, err := o.shared.Capacity()
			return err
		}, true},
		{"NodeStage", func(ctx context.Context, o *outage, vol *storage.Record, _ *storage.Snapshot) error {
			return o.node.Stage(ctx, storage.StageRequest{VolumeID: vol.ID, StagingPath: staging(o), Capability: sharedCap})
		}, true},
		{"NodePublish", func(ctx context.Context, o *outage, vol *storage.Record, _ *storage.Snapshot) error {
			return o.node.Publish(ctx, storage.PublishRequest{VolumeID: vol.ID, StagingPath: staging(o),
				TargetPath: filepath.Join(o.kubelet, "pods", "target"), Capability: sharedCap})
		}, true},
		{"NodeExpand", func(ctx context.Context, o *outage, vol *storage.Record, _ *storage.Snapshot) error {
			_, err := o.node.Expand(ctx, storage.ExpandRequest{VolumeID: vol.ID, StagingPath: staging(o), RequiredBytes: 2 * mib})
			return err
		}, true},
		// These answer no error: the pool must still be found dead, and untouched.
		{"purger", func(ctx context.Context, o *outage, _ *storage.Record, _ *storage.Snapshot) error {
			o.shared.PurgeTrash(ctx)
			return nil
		}, false},
		{"listing (index rescan)", func(_ context.Context, o *outage, _ *storage.Record, _ *storage.Snapshot) error {
			o.shared.Records()
			o.shared.Snapshots()
			return nil
		}, false},
	}
	for _, oc := range outages {
		t.Run(oc.name, func(t *testing.T) {
			for _, tc := range ops {
				t.Run(tc.name, func(t *testing.T) {
					o := startOutage(t, oc.source, 0)
					vol, snap := o.populate(t)
					before := o.content(t)
					oc.brk(o, t)
					err := tc.do(quiet(), o, vol, snap)
					if tc.answer && !errors.Is(err, storage.ErrNotReady) {
						t.Errorf("error %v, want ErrNotReady", err)
					}
					if tc.answer && err != nil && (!strings.Contains(err.Error(), `pool sh`) || !strings.Contains(err.Error(), o.path)) {
						t.Errorf("error %q does not name the pool sh and its path %s", err, o.path)
					}
					unserved := o.e.UnservedPools()
					if unserved == nil || !strings.Contains(unserved.Error(), o.path) {
						t.Errorf("UnservedPools() = %v, want the pool sh at %s", unserved, o.path)
					}
					if !o.mounted.Load() {
						if local := tree(t, o.path); len(local) > 0 {
							t.Errorf("written on the local disk beneath the pool path: %v", local)
						}
					}
					if after := o.content(t); !slices.Equal(after, before) {
						t.Errorf("the pool's filesystem changed:\nbefore %v\nafter  %v", before, after)
					}
					// The dir pool serves meanwhile.
					r := mustCreate(t, o.local, "pvc-local", mib)
					mustDelete(t, o.local, r.Hash())
				})
			}
		})
	}
}

// TestDeadSharedMountRemounted: a pool with a source whose mount died is mounted
// again by the next call, which then succeeds; with no call, by the engine's periodic
// check, so a controller never serves a dead mount for good.
func TestDeadSharedMountRemounted(t *testing.T) {
	t.Run("by the next call", func(t *testing.T) {
		o := startOutage(t, true, 0)
		vol := mustCreate(t, o.shared, "pvc-1", mib)
		o.kill(t)
		if _, _, err := o.e.Volume(vol.ID); err != nil {
			t.Fatalf("Volume after the mount died: %v, want the pool remounted", err)
		}
		if n := o.mounts.Load(); n != 2 {
			t.Errorf("mount(8) ran %d times, want 2 (start, remount)", n)
		}
		if err := o.e.UnservedPools(); err != nil {
			t.Errorf("UnservedPools() = %v after the remount", err)
		}
		mustDelete(t, o.shared, vol.Hash())
	})
	t.Run("by the periodic check", func(t *testing.T) {
		o := startOutage(t, true, 10*time.Millisecond)
		// Twice: the first death may meet the purge round that start-up kicked.
		for want := int32(2); want <= 3; want++ {
			o.kill(t)
			deadline := time.Now().Add(purgeTimeout)
			for {
				mounted, err := o.fh.Host().Mounts.IsMountPoint(o.path)
				if mounted && err == nil && o.mounts.Load() == want {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the dead mount was not replaced: %t, %v, mount(8) ran %d times", mounted, err, o.mounts.Load())
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		if err := o.e.UnservedPools(); err != nil {
			t.Errorf("UnservedPools() = %v after the remount", err)
		}
	})
}

// TestSharedPoolServedAgain: once the pool's filesystem is mounted again (by the
// operator, or by the engine once mount(8) works again), the pool is served again
// and read as at start-up: a build another host left half done is rolled back, and
// the binds of its volumes found in the mount table are publications. The deletion
// refused meanwhile succeeds when retried, and the data goes.
func TestSharedPoolServedAgain(t *testing.T) {
	for _, tc := range []struct {
		name    string
		source  bool
		brk     func(o *outage, t *testing.T)
		restore func(o *outage, t *testing.T)
	}{
		{"operator-mounted, unmounted", false, (*outage).unmount, func(o *outage, t *testing.T) {
			if err := o.mount(); err != nil {
				t.Fatal(err)
			}
		}},
		{"source, dead, remount failing", true, func(o *outage, t *testing.T) { o.refuse.Store(true); o.kill(t) },
			func(o *outage, _ *testing.T) { o.refuse.Store(false) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := startOutage(t, tc.source, 10*time.Millisecond)
			vol := mustCreate(t, o.shared, "pvc-1", mib)
			writeFile(t, filepath.Join(o.shared.DataPath(vol.Hash()), "file"), "data")
			tc.brk(o, t)
			ctx := quiet()
			if err := o.e.DeleteVolume(ctx, vol.ID); !errors.Is(err, storage.ErrNotReady) {
				t.Fatalf("DeleteVolume with the mount gone: %v, want ErrNotReady", err)
			}
			if !o.mounted.Load() {
				assertContent(t, filepath.Join(o.remote, "volumes", vol.Hash(), "data", "file"), "data")
			}
			halfBuilt := filepath.Join(o.path, "tmp", "0123456789abcdef0123456789abcdef.0123")
			target := filepath.Join(o.kubelet, "pods", "target")
			if err := os.Mkdir(target, 0o750); err != nil {
				t.Fatal(err)
			}
			var setupErr error
			setup := func() {
				// Another host's build stopped halfway meanwhile, and a bind of the
				// volume's data is in the mount table.
				if setupErr = os.MkdirAll(filepath.Join(halfBuilt, "data"), 0o700); setupErr == nil {
					setupErr = o.fh.Host().Mounts.Bind(o.shared.DataPath(vol.Hash()), target, mounter.Options{})
				}
			}
			o.afterMount.Store(&setup)
			tc.restore(o, t)
			deadline := time.Now().Add(purgeTimeout)
			for o.e.UnservedPools() != nil {
				if time.Now().After(deadline) {
					t.Fatalf("pool not served again: %v", o.e.UnservedPools())
				}
				time.Sleep(5 * time.Millisecond)
			}
			if setupErr != nil {
				t.Fatalf("what other hosts did: %v", setupErr)
			}
			waitEmpty(t, filepath.Join(o.path, "tmp"))
			// Found just after the pool is served again (Engine.onServed).
			for pubs := o.e.Publications(vol.ID); len(pubs) != 1 || pubs[0].TargetPath != target; pubs = o.e.Publications(vol.ID) {
				if time.Now().After(deadline) {
					t.Fatalf("publications once served again: %+v, want the bind at %s", pubs, target)
				}
				time.Sleep(5 * time.Millisecond)
			}
			if err := o.fh.Host().Mounts.Unmount(target); err != nil {
				t.Fatal(err)
			}
			o.e.RemovePublication(vol.ID, target)
			if err := o.e.DeleteVolume(ctx, vol.ID); err != nil {
				t.Fatalf("DeleteVolume retried once served again: %v", err)
			}
			assertMissing(t, o.shared.VolumeDir(vol.Hash()))
			waitEmpty(t, filepath.Join(o.path, "trash"))
		})
	}
}
