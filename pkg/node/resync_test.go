package node_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/node"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/quota"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// movedRemote serves one source directory from "node-b": Fetch reports its
// generation and start time, FetchDelta copies it anew and exchanges it with the
// base once released (the delta itself is pkg/transfer's).
type movedRemote struct {
	*testengine.DirRemote
	dir  string
	hold chan struct{}
}

func (m *movedRemote) Fetch(ctx context.Context, src *storage.Source, peer storage.Peer, dest string, max int64, progress func(int64)) (*storage.Fetched, error) {
	since := time.Now()
	got, err := m.DirRemote.Fetch(ctx, src, peer, dest, max, progress)
	if err == nil {
		got.Generation, got.Since = "g1", since
	}
	return got, err
}

func (m *movedRemote) FetchDelta(ctx context.Context, _ *storage.Source, _ storage.Peer, base, staging string, _ storage.Pulled, _ int64, _ func(int64)) (*storage.Fetched, error) {
	select {
	case <-m.hold:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	since := time.Now()
	if err := os.CopyFS(filepath.Join(staging, "data"), os.DirFS(m.dir)); err != nil {
		return nil, err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(staging, "data"), unix.AT_FDCWD, base, unix.RENAME_EXCHANGE); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(staging); err != nil {
		return nil, err
	}
	return &storage.Fetched{Tree: true, SizeBytes: 1 << 20, AccessType: storage.AccessMount, Generation: "g1", Since: since, Delta: true}, nil
}

// NodeStageVolume of a moved volume (the resync attribute in its volume
// context) brings it up to date with its source first: Aborted while that runs,
// then staged; a source its record does not name is FailedPrecondition.
func TestStageResyncsMovedVolume(t *testing.T) {
	f := newFixture(t)
	src := t.TempDir()
	testutil.WriteFile(t, filepath.Join(src, "f"), "v1")
	srcID := storage.VolumeID("default", "on-node-b")
	m := &movedRemote{DirRemote: testengine.NewDirRemote(1 << 20), dir: src, hold: make(chan struct{})}
	m.Add(srcID, src)
	release := sync.OnceFunc(func() { close(m.hold) })
	t.Cleanup(release)
	f.engine.SetRemote(m)

	req := storage.CreateRequest{Name: "pvc-moved", RequiredBytes: 64 << 20, AccessType: storage.AccessMount,
		Source: &storage.Source{Kind: storage.SourceVolume, ID: srcID}}
	var r *storage.Record
	var err error
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		r, err = f.pool.Create(context.Background(), req)
		if !errors.Is(err, storage.ErrInProgress) || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	plain := f.createVolume(t, "pvc-plain")
	testutil.WriteFile(t, filepath.Join(src, "f"), "v2")

	stage := func(ctx context.Context, r *storage.Record, from string) error {
		staging := filepath.Join(f.kubelet, "staging-"+r.Name)
		_, err := f.srv.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: r.ID, StagingTargetPath: staging,
			VolumeCapability: mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER),
			VolumeContext:    map[string]string{"pool": "default", node.AttrResyncFrom: from}})
		return err
	}
	tests := []struct {
		name     string
		vol      *storage.Record
		from     string
		wantCode codes.Code
	}{
		{"another source than the record's", r, storage.VolumeID("default", "elsewhere"), codes.FailedPrecondition},
		{"a volume that was not pulled", plain, srcID, codes.FailedPrecondition},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantCode(t, stage(context.Background(), tc.vol, tc.from), tc.wantCode)
		})
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	wantCode(t, stage(ctx, r, srcID), codes.Aborted)
	wantCode(t, stage(context.Background(), r, srcID), codes.Aborted) // asked again while it runs
	testutil.AssertContent(t, filepath.Join(f.dataPath(r), "f"), "v1")
	release()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		err = stage(context.Background(), r, srcID)
		if status.Code(err) != codes.Aborted || time.Now().After(deadline) {
			break
		}
	}
	wantCode(t, err, codes.OK)
	testutil.AssertContent(t, filepath.Join(f.dataPath(r), "f"), "v2")
	// Staged again (kubelet's retry after a restart): nothing is resynced.
	testutil.WriteFile(t, filepath.Join(f.dataPath(r), "f"), "written on this node")
	wantCode(t, stage(context.Background(), r, srcID), codes.OK)
	testutil.AssertContent(t, filepath.Join(f.dataPath(r), "f"), "written on this node")
}

// A quota volume moved from another node: what its resync brings is charged to
// the volume's project (made under the resync's staging directory, of that
// project), and the usage counts it.
func TestQuotaResyncCharged(t *testing.T) {
	forEachQuotaFS(t, func(t *testing.T, f *kindFixture) {
		src := t.TempDir()
		testutil.WriteFile(t, filepath.Join(src, "f"), "v1")
		srcID := storage.VolumeID(f.cfg.Name, "on-node-b")
		m := &movedRemote{DirRemote: testengine.NewDirRemote(4 << 20), dir: src, hold: make(chan struct{})}
		close(m.hold)
		m.Add(srcID, src)
		f.engine.SetRemote(m)
		req := storage.CreateRequest{Name: "pvc-moved", RequiredBytes: 16 << 20, AccessType: storage.AccessMount,
			Source: &storage.Source{Kind: storage.SourceVolume, ID: srcID}}
		var r *storage.Record
		var err error
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
			r, err = f.pool.Create(context.Background(), req)
			if !errors.Is(err, storage.ErrInProgress) || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		testutil.MkdirAll(t, filepath.Join(src, "d", "e"))
		testutil.WriteRandom(t, filepath.Join(src, "d", "e", "blob"), 4<<20)
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
			err = f.engine.Resync(context.Background(), r.ID, srcID)
			if !errors.Is(err, storage.ErrInProgress) || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		data := f.pool.DataPath(r.Hash())
		for _, p := range []string{".", "d", "d/e"} {
			if id, err := quota.Project(filepath.Join(data, p)); err != nil || id != r.ProjectID {
				t.Errorf("%s: project %d (%v), want the volume's %d", p, id, err, r.ProjectID)
			}
		}
		target := f.publishQuota(t, r, "pod")
		if b, _ := f.usage(t, r.ID, target); b.GetUsed() < 4<<20 {
			t.Errorf("usage %d bytes after resyncing 4 MiB: what the resync brought is not charged to the volume", b.GetUsed())
		}
	})
}
