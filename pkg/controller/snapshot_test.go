package controller_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/controller"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// readyTimeout bounds the wait for a background snapshot copy.
const readyTimeout = 2 * time.Minute

// loopPool is a pool of kind called name on a fresh 4 GiB filesystem fs made on a
// loop file, which the test unmounts at cleanup.
func loopPool(t *testing.T, fs testutil.FS, kind, name string) storage.PoolConfig {
	t.Helper()
	mnt := testutil.MountFS(t, fs, 4<<30)
	return storage.PoolConfig{Name: name, Path: filepath.Join(mnt, name), Kind: kind}
}

func snapReq(name, src string) *csi.CreateSnapshotRequest {
	return &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: src}
}

// snapshot makes snapshot name of volume src and repeats CreateSnapshot, as the
// snapshot sidecar does, until it is ready; every answer must name the same snapshot.
// atOnce demands it be ready in the first answer (reflink copies).
func (f *fixture) snapshot(t testing.TB, name, src string, atOnce bool) *csi.Snapshot {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	var first *csi.Snapshot
	for {
		resp, err := f.srv.CreateSnapshot(context.Background(), snapReq(name, src))
		wantCode(t, err, codes.OK)
		s := resp.GetSnapshot()
		if first == nil {
			first = s
			if atOnce && !s.GetReadyToUse() {
				t.Fatalf("snapshot %s is not ready at once on a reflink filesystem", name)
			}
		}
		if s.GetSnapshotId() != first.GetSnapshotId() || s.GetSourceVolumeId() != src {
			t.Fatalf("repeated CreateSnapshot answered %s of %s, first %s", s.GetSnapshotId(), s.GetSourceVolumeId(), first.GetSnapshotId())
		}
		if s.GetReadyToUse() {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("snapshot %s not ready after %v", name, readyTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func fromSnapshot(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func fromVolume(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

// inPool is a create request for volume name of size bytes in pool, from source.
func inPool(name, pool string, size int64, source *csi.VolumeContentSource) *csi.CreateVolumeRequest {
	req := createReq(name, size)
	req.Parameters = map[string]string{controller.ParamPool: pool}
	req.VolumeContentSource = source
	return req
}

// create makes volume name in pool from source and returns its ID.
func (f *fixture) create(t testing.TB, name, pool string, size int64, source *csi.VolumeContentSource) string {
	t.Helper()
	resp, err := f.srv.CreateVolume(context.Background(), inPool(name, pool, size, source))
	wantCode(t, err, codes.OK)
	return resp.GetVolume().GetVolumeId()
}

// createCopied creates a volume whose content is copied in the background and, as
// the provisioner does, retries while CreateVolume answers Aborted because the copy
// outlasts the call's wait (how long it takes depends on the machine's load).
func (f *fixture) createCopied(t testing.TB, name, pool string, size int64, source *csi.VolumeContentSource) (string, error) {
	t.Helper()
	for deadline := time.Now().Add(readyTimeout); ; time.Sleep(100 * time.Millisecond) {
		resp, err := f.srv.CreateVolume(context.Background(), inPool(name, pool, size, source))
		if status.Code(err) != codes.Aborted || time.Now().After(deadline) {
			return resp.GetVolume().GetVolumeId(), err
		}
	}
}

// writeTree writes files of random data, size bytes each, in nested directories
// under dir (named after tag), with a symlink and an empty file, and syncs them.
func writeTree(t *testing.T, dir, tag string, files int, size int64) {
	t.Helper()
	for i := range files {
		writeRandom(t, filepath.Join(dir, tag, fmt.Sprintf("d%d", i%3), fmt.Sprintf("f%d", i)), size)
	}
	if err := os.WriteFile(filepath.Join(dir, tag, "empty"), nil, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("d0/f0", filepath.Join(dir, tag, "link")); err != nil {
		t.Fatal(err)
	}
}

// writeRandom writes size random bytes to path (its directory created) and syncs them.
func writeRandom(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotRestoreClone snapshots, restores and clones volumes of every kind on XFS
// with reflink (ready at once) and on ext4 (copied in the background): the copies
// hold exactly the source's data at the time they were made, and writes to any of
// them reach no other.
func TestSnapshotRestoreClone(t *testing.T) {
	tests := []struct {
		name   string
		fs     testutil.FS
		kind   string
		atOnce bool
	}{
		{"dir on xfs-reflink", testutil.XFSPlain, storage.KindDir, true},
		{"dir on ext4", testutil.Ext4Plain, storage.KindDir, false},
		{"quota on xfs-reflink", testutil.XFSPrjQuota, storage.KindQuota, true},
		{"quota on ext4", testutil.Ext4PrjQuota, storage.KindQuota, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.kind == storage.KindQuota {
				testutil.RequireQuotaKernel(t)
			}
			f := newFixture(t, loopPool(t, tc.fs, tc.kind, "p"))
			const size = 256 << 20
			src := f.create(t, "src", "p", size, nil)
			srcDir := f.dataPath(t, src)
			writeTree(t, srcDir, "a", 12, 2<<20)
			atSnapshot := testutil.TreeSums(t, srcDir)

			snap := f.snapshot(t, "snap", src, tc.atOnce)
			// Writes after the snapshot: changed, added and removed files.
			writeRandom(t, filepath.Join(srcDir, "a", "d0", "f0"), 1<<20)
			writeTree(t, srcDir, "b", 3, 1<<20)
			if err := os.Remove(filepath.Join(srcDir, "a", "d1", "f1")); err != nil {
				t.Fatal(err)
			}
			atClone := testutil.TreeSums(t, srcDir)

			restored := f.create(t, "restored", "p", size, fromSnapshot(snap.GetSnapshotId()))
			testutil.SameTree(t, "the restored volume", testutil.TreeSums(t, f.dataPath(t, restored)), atSnapshot)
			clone := f.create(t, "clone", "p", size, fromVolume(src))
			testutil.SameTree(t, "the clone", testutil.TreeSums(t, f.dataPath(t, clone)), atClone)

			// Writes to the source, the restore and the clone reach no other copy,
			// nor the snapshot: a second restore still finds the snapshot's data.
			writeRandom(t, filepath.Join(srcDir, "a", "d2", "f2"), 1<<20)
			writeRandom(t, filepath.Join(f.dataPath(t, restored), "a", "d0", "f3"), 1<<20)
			writeRandom(t, filepath.Join(f.dataPath(t, clone), "b", "d0", "f0"), 1<<20)
			again := f.create(t, "restored-again", "p", size, fromSnapshot(snap.GetSnapshotId()))
			testutil.SameTree(t, "the second restored volume", testutil.TreeSums(t, f.dataPath(t, again)), atSnapshot)
			cloneNow := testutil.TreeSums(t, f.dataPath(t, clone))
			if cloneNow["a/d2/f2"] != atClone["a/d2/f2"] {
				t.Fatal("a write to the source reached its clone")
			}
		})
	}
}

func TestCreateSnapshotArguments(t *testing.T) {
	tests := []struct {
		name     string
		req      func(src, other string) *csi.CreateSnapshotRequest
		wantCode codes.Code
	}{
		{"valid", func(src, _ string) *csi.CreateSnapshotRequest { return snapReq("snap-1", src) }, codes.OK},
		// The first snapshot, "snap", is made before each case: this one repeats it.
		{"same request again", func(src, _ string) *csi.CreateSnapshotRequest { return snapReq("snap", src) }, codes.OK},
		{"sidecar parameters", func(src, _ string) *csi.CreateSnapshotRequest {
			r := snapReq("snap-1", src)
			r.Parameters = map[string]string{"csi.storage.k8s.io/volumesnapshot/name": "x"}
			return r
		}, codes.OK},
		{"no name", func(src, _ string) *csi.CreateSnapshotRequest { return snapReq("", src) }, codes.InvalidArgument},
		{"hostile name", func(src, _ string) *csi.CreateSnapshotRequest { return snapReq("../x", src) }, codes.InvalidArgument},
		{"no source", func(string, string) *csi.CreateSnapshotRequest { return snapReq("snap-1", "") }, codes.InvalidArgument},
		{"hostile source", func(string, string) *csi.CreateSnapshotRequest { return snapReq("snap-1", "b1-default-../x") }, codes.InvalidArgument},
		{"unknown source", func(string, string) *csi.CreateSnapshotRequest { return snapReq("snap-1", unknownID) }, codes.NotFound},
		{"source in no Berth format", func(string, string) *csi.CreateSnapshotRequest { return snapReq("snap-1", "vol-1") }, codes.NotFound},
		{"unknown parameter", func(src, _ string) *csi.CreateSnapshotRequest {
			r := snapReq("snap-1", src)
			r.Parameters = map[string]string{"color": "blue"}
			return r
		}, codes.InvalidArgument},
		{"same name, another source", func(_, other string) *csi.CreateSnapshotRequest { return snapReq("snap", other) }, codes.AlreadyExists},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			src, other := f.mustCreate(t, "src").GetVolumeId(), f.mustCreate(t, "other").GetVolumeId()
			first := f.snapshot(t, "snap", src, false)
			req := tc.req(src, other)
			resp, err := f.srv.CreateSnapshot(context.Background(), req)
			wantCode(t, err, tc.wantCode)
			if req.GetName() == "snap" && err == nil && resp.GetSnapshot().GetSnapshotId() != first.GetSnapshotId() {
				t.Fatalf("the same request named %s, first %s", resp.GetSnapshot().GetSnapshotId(), first.GetSnapshotId())
			}
		})
	}
}

// TestRestoreSize: a restore or clone smaller than its source is OutOfRange; one of
// the same size or larger works and reports its own capacity.
func TestRestoreSize(t *testing.T) {
	const srcSize = 64 << 20
	tests := []struct {
		name     string
		size     int64
		clone    bool
		wantCode codes.Code
	}{
		{"restore smaller", srcSize - 4096, false, codes.OutOfRange},
		{"restore same size", srcSize, false, codes.OK},
		{"restore larger", 2 * srcSize, false, codes.OK},
		{"clone smaller", srcSize - 4096, true, codes.OutOfRange},
		{"clone larger", 2 * srcSize, true, codes.OK},
	}
	f := newFixture(t, loopPool(t, testutil.XFSPlain, storage.KindDir, "p"))
	src := f.create(t, "src", "p", srcSize, nil)
	writeTree(t, f.dataPath(t, src), "a", 2, 1<<20)
	want := testutil.TreeSums(t, f.dataPath(t, src))
	snap := f.snapshot(t, "snap", src, true)
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			source := fromSnapshot(snap.GetSnapshotId())
			if tc.clone {
				source = fromVolume(src)
			}
			resp, err := f.srv.CreateVolume(context.Background(), inPool(fmt.Sprintf("v%d", i), "p", tc.size, source))
			wantCode(t, err, tc.wantCode)
			if err != nil {
				return
			}
			if got := resp.GetVolume().GetCapacityBytes(); got != tc.size {
				t.Fatalf("capacity %d, want %d", got, tc.size)
			}
			if cs := resp.GetVolume().GetContentSource(); cs.String() != source.String() {
				t.Fatalf("content_source %v, want %v", cs, source)
			}
			testutil.SameTree(t, "the copy", testutil.TreeSums(t, f.dataPath(t, resp.GetVolume().GetVolumeId())), want)
		})
	}
}

// TestRestoreSources: content sources that name nothing are NotFound; one of another
// pool is InvalidArgument.
func TestRestoreSources(t *testing.T) {
	mnt := testutil.MountFS(t, testutil.XFSPlain, 4<<30)
	f := newFixture(t, dirPool(mnt, "a"), dirPool(mnt, "b"))
	srcA, srcB := f.create(t, "src-a", "a", 1<<20, nil), f.create(t, "src-b", "b", 1<<20, nil)
	snapA, snapB := f.snapshot(t, "snap-a", srcA, true), f.snapshot(t, "snap-b", srcB, true)
	tests := []struct {
		name     string
		source   *csi.VolumeContentSource
		wantCode codes.Code
	}{
		{"snapshot of the pool", fromSnapshot(snapA.GetSnapshotId()), codes.OK},
		{"volume of the pool", fromVolume(srcA), codes.OK},
		{"unknown snapshot", fromSnapshot("s1-a-0123456789abcdef0123456789abcdef"), codes.NotFound},
		{"snapshot ID in no Berth format", fromSnapshot("snapshot-1"), codes.NotFound},
		{"snapshot of an unknown pool", fromSnapshot("s1-zz-0123456789abcdef0123456789abcdef"), codes.InvalidArgument},
		{"hostile snapshot ID", fromSnapshot("s1-a-../../x"), codes.InvalidArgument},
		{"empty snapshot ID", fromSnapshot(""), codes.InvalidArgument},
		{"unknown volume", fromVolume("b1-a-0123456789abcdef0123456789abcdef"), codes.NotFound},
		{"volume ID in no Berth format", fromVolume("pvc-1"), codes.NotFound},
		{"empty volume ID", fromVolume(""), codes.InvalidArgument},
		{"snapshot of another pool", fromSnapshot(snapB.GetSnapshotId()), codes.InvalidArgument},
		{"volume of another pool", fromVolume(srcB), codes.InvalidArgument},
		{"neither", &csi.VolumeContentSource{}, codes.InvalidArgument},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.srv.CreateVolume(context.Background(), inPool(fmt.Sprintf("v%d", i), "a", 1<<20, tc.source))
			wantCode(t, err, tc.wantCode)
		})
	}
}

// copying starts a copy slow enough to be caught in the act: 512 MiB on ext4,
// without reflinks. It returns the fixture and the source volume's ID.
func copying(t *testing.T) (*fixture, string) {
	t.Helper()
	f := newFixture(t, loopPool(t, testutil.Ext4Plain, storage.KindDir, "p"))
	src := f.create(t, "src", "p", 1<<30, nil)
	writeRandom(t, filepath.Join(f.dataPath(t, src), "blob"), 512<<20)
	return f, src
}

// TestRestoreNotReady restores from a snapshot whose background copy has not ended:
// FailedPrecondition, never a partial copy; the source may not be deleted
// meanwhile. Once ready, both work.
func TestRestoreNotReady(t *testing.T) {
	f, src := copying(t)
	want := testutil.TreeSums(t, f.dataPath(t, src))
	resp, err := f.srv.CreateSnapshot(context.Background(), snapReq("snap", src))
	wantCode(t, err, codes.OK)
	snap := resp.GetSnapshot()
	if snap.GetReadyToUse() {
		t.Fatal("a copy of 512 MiB without reflinks was ready at once")
	}
	_, err = f.srv.CreateVolume(context.Background(), inPool("restored", "p", 1<<30, fromSnapshot(snap.GetSnapshotId())))
	wantCode(t, err, codes.FailedPrecondition)
	_, err = f.srv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: src})
	wantCode(t, err, codes.FailedPrecondition)
	list, err := f.srv.ListSnapshots(context.Background(), &csi.ListSnapshotsRequest{SnapshotId: snap.GetSnapshotId()})
	wantCode(t, err, codes.OK)
	if e := list.GetEntries(); len(e) != 1 || e[0].GetSnapshot().GetReadyToUse() {
		t.Fatalf("ListSnapshots during the copy: %v, want the snapshot, not ready", e)
	}
	got, err := f.srv.GetSnapshot(context.Background(), &csi.GetSnapshotRequest{SnapshotId: snap.GetSnapshotId()})
	if wantCode(t, err, codes.OK); got.GetSnapshot().GetReadyToUse() {
		t.Fatal("GetSnapshot during the copy: ready, want not ready")
	}

	f.snapshot(t, "snap", src, false)
	restored, err := f.createCopied(t, "restored", "p", 1<<30, fromSnapshot(snap.GetSnapshotId()))
	wantCode(t, err, codes.OK)
	testutil.SameTree(t, "the restored volume", testutil.TreeSums(t, f.dataPath(t, restored)), want)
	_, err = f.srv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: src})
	wantCode(t, err, codes.OK)
}

// TestCopyHoldsItsSource: while a clone or restore copies its source, the source
// cannot be deleted (Aborted: the operation in progress ends, then a retry works),
// and the copy is complete.
func TestCopyHoldsItsSource(t *testing.T) {
	for _, restore := range []bool{false, true} {
		name := "clone"
		if restore {
			name = "restore"
		}
		t.Run(name, func(t *testing.T) {
			f, src := copying(t)
			want := testutil.TreeSums(t, f.dataPath(t, src))
			source, del := fromVolume(src), func() error {
				_, err := f.srv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: src})
				return err
			}
			if restore {
				snap := f.snapshot(t, "snap", src, false)
				source, del = fromSnapshot(snap.GetSnapshotId()), func() error {
					_, err := f.srv.DeleteSnapshot(context.Background(), &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId()})
					return err
				}
			}
			done := make(chan error, 1)
			go func() {
				_, err := f.createCopied(t, "copy", "p", 1<<30, source)
				done <- err
			}()
			// The copy has begun once its directory is under tmp/.
			p, _ := f.engine.Pool("p")
			hash := storage.VolumeID("p", "copy")[len("b1-p-"):]
			tmp := filepath.Join(p.Config().Path, "tmp")
			for deadline := time.Now().Add(readyTimeout); ; time.Sleep(time.Millisecond) {
				entries, _ := os.ReadDir(tmp)
				if slices.ContainsFunc(entries, func(e os.DirEntry) bool { return strings.HasPrefix(e.Name(), hash) }) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the copy never started")
				}
			}
			wantCode(t, del(), codes.Aborted)
			select {
			case err := <-done:
				wantCode(t, err, codes.OK)
			case <-time.After(readyTimeout + time.Minute):
				t.Fatal("the copy did not end")
			}
			testutil.SameTree(t, "the copy", testutil.TreeSums(t, f.dataPath(t, storage.VolumeID("p", "copy"))), want)
			wantCode(t, del(), codes.OK)
		})
	}
}

// TestDeleteSnapshot: deleting is idempotent; a volume can be deleted while its
// snapshots live on, and they still restore.
func TestDeleteSnapshot(t *testing.T) {
	f := newFixture(t, loopPool(t, testutil.XFSPlain, storage.KindDir, "p"))
	src := f.create(t, "src", "p", 16<<20, nil)
	writeTree(t, f.dataPath(t, src), "a", 3, 1<<20)
	want := testutil.TreeSums(t, f.dataPath(t, src))
	keep, gone := f.snapshot(t, "keep", src, true), f.snapshot(t, "gone", src, true)

	_, err := f.srv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: src})
	wantCode(t, err, codes.OK)
	list, err := f.srv.ListSnapshots(context.Background(), &csi.ListSnapshotsRequest{SourceVolumeId: src})
	wantCode(t, err, codes.OK)
	if len(list.GetEntries()) != 2 {
		t.Fatalf("%d snapshots of the deleted volume listed, want 2", len(list.GetEntries()))
	}
	again := f.snapshot(t, "keep", src, true)
	if again.GetSnapshotId() != keep.GetSnapshotId() {
		t.Fatalf("CreateSnapshot repeated after its source's deletion named %s, want %s", again.GetSnapshotId(), keep.GetSnapshotId())
	}

	for _, tc := range []struct {
		name     string
		id       string
		wantCode codes.Code
	}{
		{"existing", gone.GetSnapshotId(), codes.OK},
		{"again", gone.GetSnapshotId(), codes.OK},
		{"unknown", "s1-p-0123456789abcdef0123456789abcdef", codes.OK},
		{"pool served elsewhere", "s1-zz-0123456789abcdef0123456789abcdef", codes.FailedPrecondition},
		{"no Berth format", "snapshot-1", codes.OK},
		{"empty", "", codes.InvalidArgument},
		{"hostile", "s1-p-../../x", codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.srv.DeleteSnapshot(context.Background(), &csi.DeleteSnapshotRequest{SnapshotId: tc.id})
			wantCode(t, err, tc.wantCode)
		})
	}
	_, err = f.srv.CreateVolume(context.Background(), inPool("from-gone", "p", 16<<20, fromSnapshot(gone.GetSnapshotId())))
	wantCode(t, err, codes.NotFound)
	restored := f.create(t, "restored", "p", 16<<20, fromSnapshot(keep.GetSnapshotId()))
	testutil.SameTree(t, "the volume restored after its source's deletion", testutil.TreeSums(t, f.dataPath(t, restored)), want)
}

func TestListSnapshots(t *testing.T) {
	f := newFixture(t, loopPool(t, testutil.XFSPlain, storage.KindDir, "p"))
	a, b := f.create(t, "a", "p", 1<<20, nil), f.create(t, "b", "p", 1<<20, nil)
	var all, ofA []string
	for i, src := range []string{a, a, a, b, b} {
		id := f.snapshot(t, fmt.Sprintf("snap-%d", i), src, true).GetSnapshotId()
		all = append(all, id)
		if src == a {
			ofA = append(ofA, id)
		}
	}
	slices.Sort(all)
	slices.Sort(ofA)
	list := func(req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
		return f.srv.ListSnapshots(context.Background(), req)
	}
	ids := func(resp *csi.ListSnapshotsResponse) []string {
		var out []string
		for _, e := range resp.GetEntries() {
			out = append(out, e.GetSnapshot().GetSnapshotId())
		}
		return out
	}

	t.Run("pages", func(t *testing.T) {
		for _, max := range []int32{0, 1, 2, 4, 5, 6} {
			var got []string
			token := ""
			for page := 0; ; page++ {
				resp, err := list(&csi.ListSnapshotsRequest{MaxEntries: max, StartingToken: token})
				wantCode(t, err, codes.OK)
				if max > 0 && len(resp.GetEntries()) > int(max) {
					t.Fatalf("max_entries %d: a page of %d", max, len(resp.GetEntries()))
				}
				got = append(got, ids(resp)...)
				if token = resp.GetNextToken(); token == "" {
					break
				}
				if page > len(all) {
					t.Fatalf("max_entries %d: next_token never ends", max)
				}
			}
			if !slices.Equal(got, all) {
				t.Fatalf("max_entries %d: pages hold %v, want %v", max, got, all)
			}
		}
	})
	for _, tc := range []struct {
		name     string
		req      *csi.ListSnapshotsRequest
		want     []string
		wantCode codes.Code
	}{
		{"by snapshot ID", &csi.ListSnapshotsRequest{SnapshotId: all[2]}, all[2:3], codes.OK},
		{"by unknown snapshot ID", &csi.ListSnapshotsRequest{SnapshotId: "s1-p-0123456789abcdef0123456789abcdef"}, nil, codes.OK},
		{"by snapshot ID in no Berth format", &csi.ListSnapshotsRequest{SnapshotId: "snapshot-1"}, nil, codes.OK},
		{"by source volume", &csi.ListSnapshotsRequest{SourceVolumeId: a}, ofA, codes.OK},
		{"by unknown source volume", &csi.ListSnapshotsRequest{SourceVolumeId: unknownID}, nil, codes.OK},
		{"by snapshot and its source", &csi.ListSnapshotsRequest{SnapshotId: ofA[0], SourceVolumeId: a}, ofA[:1], codes.OK},
		{"by snapshot and another source", &csi.ListSnapshotsRequest{SnapshotId: ofA[0], SourceVolumeId: b}, nil, codes.OK},
		{"by source volume, paged", &csi.ListSnapshotsRequest{SourceVolumeId: a, MaxEntries: 2}, ofA[:2], codes.OK},
		{"bad token", &csi.ListSnapshotsRequest{StartingToken: "not-a-token"}, nil, codes.Aborted},
		{"negative max_entries", &csi.ListSnapshotsRequest{MaxEntries: -1}, nil, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := list(tc.req)
			wantCode(t, err, tc.wantCode)
			if got := ids(resp); err == nil && !slices.Equal(got, tc.want) {
				t.Fatalf("listed %v, want %v", got, tc.want)
			}
		})
	}
}

// TestSnapshotCapacity: a snapshot takes its source's size from the pool's capacity
// (without overcommit) and gives it back when deleted.
func TestSnapshotCapacity(t *testing.T) {
	f := newFixture(t, tmpfsPool(t, 256<<20, false))
	src := f.mustCreate(t, "src")
	if err := os.WriteFile(filepath.Join(f.dataPath(t, src.GetVolumeId()), "f"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := f.capacity(t)
	snap := f.snapshot(t, "snap", src.GetVolumeId(), false)
	if got := f.capacity(t); got != before-src.GetCapacityBytes() {
		t.Fatalf("available_capacity %d with a snapshot, want %d (%d less the source's %d)", got, before-src.GetCapacityBytes(), before, src.GetCapacityBytes())
	}
	if snap.GetSizeBytes() != src.GetCapacityBytes() {
		t.Fatalf("size_bytes %d, want the source's %d", snap.GetSizeBytes(), src.GetCapacityBytes())
	}
	_, err := f.srv.DeleteSnapshot(context.Background(), &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId()})
	wantCode(t, err, codes.OK)
	if got := f.capacity(t); got != before {
		t.Fatalf("available_capacity %d after DeleteSnapshot, want %d", got, before)
	}
}

// FuzzListSnapshots: whatever the filters, a starting_token is refused (Aborted)
// unless it is a snapshot ID, max_entries only if negative; otherwise the pages that
// follow list exactly the snapshots the filters select (snapshot_id: that snapshot;
// source_volume_id: its snapshots) whose IDs are not below the token, in ID order.
func FuzzListSnapshots(f *testing.F) {
	fx := newFixture(f, dirPool(f.TempDir(), "p"), dirPool(f.TempDir(), "q"))
	vols := []string{fx.create(f, "a", "p", 1<<20, nil), fx.create(f, "b", "p", 1<<20, nil), fx.create(f, "c", "q", 1<<20, nil)}
	var snaps []*csi.Snapshot
	for i, src := range []string{vols[0], vols[0], vols[1], vols[2], vols[2]} {
		snaps = append(snaps, fx.snapshot(f, fmt.Sprintf("snap-%d", i), src, false))
	}
	slices.SortFunc(snaps, func(a, b *csi.Snapshot) int { return strings.Compare(a.GetSnapshotId(), b.GetSnapshotId()) })
	f.Add("", int32(2), "", "")
	f.Add(snaps[2].GetSnapshotId(), int32(1), "", vols[0])
	f.Add("", int32(0), snaps[1].GetSnapshotId(), snaps[1].GetSourceVolumeId())
	f.Add(snaps[4].GetSnapshotId()+"0", int32(0), snaps[4].GetSnapshotId(), "")
	f.Add("not-a-token", int32(1), "snapshot-1", unknownID)
	f.Add(vols[0], int32(-1), "s1-p-0123456789abcdef0123456789abcdef", vols[2])
	page := func(req *csi.ListSnapshotsRequest) ([]string, string, error) {
		resp, err := fx.srv.ListSnapshots(context.Background(), req)
		var ids []string
		for _, e := range resp.GetEntries() {
			ids = append(ids, e.GetSnapshot().GetSnapshotId())
		}
		return ids, resp.GetNextToken(), err
	}
	f.Fuzz(func(t *testing.T, token string, max int32, snapshotID, sourceID string) {
		req := &csi.ListSnapshotsRequest{MaxEntries: max, StartingToken: token, SnapshotId: snapshotID, SourceVolumeId: sourceID}
		ids, next, err := page(req)
		_, parseErr := storage.ParseSnapshotID(token)
		switch {
		case max < 0:
			wantCode(t, err, codes.InvalidArgument)
			return
		case token != "" && parseErr != nil:
			wantCode(t, err, codes.Aborted)
			return
		}
		wantCode(t, err, codes.OK)
		if max > 0 && len(ids) > int(max) {
			t.Fatalf("max_entries %d: a page of %d", max, len(ids))
		}
		got := listPages(t, max, ids, next, func(tok string) ([]string, string, error) {
			r := proto.Clone(req).(*csi.ListSnapshotsRequest)
			r.StartingToken = tok
			return page(r)
		}, len(snaps))
		var want []string
		for _, s := range snaps {
			if (snapshotID == "" || s.GetSnapshotId() == snapshotID) && (sourceID == "" || s.GetSourceVolumeId() == sourceID) &&
				s.GetSnapshotId() >= token {
				want = append(want, s.GetSnapshotId())
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%v: listed %v, want %v", req, got, want)
		}
	})
}
