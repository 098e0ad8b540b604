package storage_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-csi/berth/pkg/storage"
)

// Golden fixtures of every released on-disk format live in testdata/upgrade/<release>
// (see its README.md: hack/upgrade-fixture makes them by running that release's
// driver). Each holds the pools "files" (dir), "images" (image) and "quotas" (quota,
// written by hand) and tree.txt, their layout. A release adds its own directory.
const upgradeFixtures = "testdata/upgrade"

// ephemeralKubeletID is the kubelet volume ID of the fixture's inline volume.
const ephemeralKubeletID = "csi-0123abcd0123abcd0123abcd0123abcd0123abcd0123abcd0123abcd0123abcd"

// upgradeVolume is a volume the fixture program asked the released driver for, and
// what its record must say. required and capFS repeat the request.
type upgradeVolume struct {
	pool, name string
	required   int64 // bytes asked for
	capFS      string
	capacity   int64 // bytes recorded
	access     string
	fsType     string
	params     map[string]string
	source     *storage.Source
	ephemeral  bool
	projectID  uint32
}

func (v upgradeVolume) id() string { return storage.VolumeID(v.pool, v.name) }

type upgradeSnapshot struct {
	pool, name, source string // source: the volume's name
	size               int64
	access, fsType     string
}

func (s upgradeSnapshot) id() string { return storage.SnapshotID(s.pool, s.name) }

func pparams(pool string, kv ...string) map[string]string {
	m := map[string]string{"pool": pool}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

var (
	upgradeVolumes = []upgradeVolume{
		{pool: "files", name: "pvc-dir-a", required: 16 * mib, capacity: 16 * mib, access: storage.AccessMount, params: pparams("files")},
		{pool: "files", name: "pvc-dir-restored", required: 32 * mib, capacity: 32 * mib, access: storage.AccessMount, params: pparams("files"),
			source: &storage.Source{Kind: "snapshot", ID: storage.SnapshotID("files", "snap-dir-a")}},
		{pool: "files", name: "pvc-dir-clone", required: 16 * mib, capacity: 16 * mib, access: storage.AccessMount, params: pparams("files"),
			source: &storage.Source{Kind: "volume", ID: storage.VolumeID("files", "pvc-dir-a")}},
		// Created with 8 MiB, expanded to 12 MiB by NodeExpandVolume.
		{pool: "files", name: "pvc-dir-grown", required: 8 * mib, capacity: 12 * mib, access: storage.AccessMount, params: pparams("files")},
		{pool: "files", name: storage.EphemeralName(ephemeralKubeletID), required: 4 * mib, capacity: 4 * mib, access: storage.AccessMount, ephemeral: true},
		{pool: "images", name: "pvc-img-ext4", required: 16 * mib, capacity: 16 * mib, access: storage.AccessMount, fsType: "ext4", params: pparams("images", "fsType", "ext4")},
		{pool: "images", name: "pvc-img-xfs", required: 300*mib + 1, capacity: 300*mib + 4096, access: storage.AccessMount, fsType: "xfs", params: pparams("images", "fsType", "xfs")},
		{pool: "images", name: "pvc-img-block", required: 8*mib + 1, capacity: 8*mib + 4096, access: storage.AccessBlock, params: pparams("images")},
		{pool: "images", name: "pvc-img-restored", required: 24 * mib, capacity: 24 * mib, access: storage.AccessMount, fsType: "ext4", params: pparams("images"),
			source: &storage.Source{Kind: "snapshot", ID: storage.SnapshotID("images", "snap-img-ext4")}},
		{pool: "images", name: "pvc-img-xfs-clone", required: 300*mib + 1, capFS: "xfs", capacity: 300*mib + 4096, access: storage.AccessMount, fsType: "xfs",
			params: pparams("images", "fsType", "xfs"), source: &storage.Source{Kind: "volume", ID: storage.VolumeID("images", "pvc-img-xfs")}},
		// Written by hand: no quota pool can run where fixtures are made.
		{pool: "quotas", name: "pvc-quota-a", capacity: 10 * mib, access: storage.AccessMount, params: pparams("quotas", "inodeLimit", "1000"), projectID: 1<<20 + 1},
	}
	upgradeSnapshots = []upgradeSnapshot{
		{pool: "files", name: "snap-dir-a", source: "pvc-dir-a", size: 16 * mib, access: storage.AccessMount},
		{pool: "images", name: "snap-img-ext4", source: "pvc-img-ext4", size: 16 * mib, access: storage.AccessMount, fsType: "ext4"},
		{pool: "images", name: "snap-img-block", source: "pvc-img-block", size: 8*mib + 4096, access: storage.AccessBlock},
	}
)

// The fixture's leftovers and records of a future version, by path in the pools.
var (
	leftoverTmp = []string{ // rolled back at start-up
		"files/tmp/" + hashOf("files", "pvc-dir-crashed-create") + ".5eed00000000c0de",
		"files/tmp/s" + snapHashOf("files", "snap-dir-crashed-copy") + ".5eed00000000beef",
	}
	leftoverTrash  = []string{"files/trash/" + hashOf("files", "pvc-dir-crashed-delete") + ".5eed00000000dead"} // purged
	leftoverTemp   = "files/volumes/" + hashOf("files", "pvc-dir-grown") + "/.record.json.tmp4242-7"            // removed
	futureVolume   = "files/volumes/" + hashOf("files", "pvc-from-the-future")                                  // left alone
	futureSnapshot = "files/snapshots/" + snapHashOf("files", "snap-from-the-future")                           // left alone
	stagedVolume   = "images/volumes/" + hashOf("images", "pvc-img-ext4")
)

func snapHashOf(pool, name string) string {
	id := storage.SnapshotID(pool, name)
	return id[len(id)-32:]
}

func TestUpgrade(t *testing.T) {
	releases, err := os.ReadDir(upgradeFixtures)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range releases {
		if !r.IsDir() {
			continue
		}
		t.Run(r.Name(), func(t *testing.T) { testUpgrade(t, filepath.Join(upgradeFixtures, r.Name())) })
	}
}

func testUpgrade(t *testing.T, fixture string) {
	base := t.TempDir()
	files := loadFixture(t, fixture, base)
	checkFixtureCovered(t, files)
	pools := []storage.PoolConfig{
		{Name: "files", Path: filepath.Join(base, "files"), Kind: storage.KindDir, Overcommit: true},
		{Name: "images", Path: filepath.Join(base, "images"), Kind: storage.KindImage, Overcommit: true},
		{Name: "quotas", Path: filepath.Join(base, "quotas"), Kind: storage.KindQuota, Overcommit: true},
	}
	// Every record, staging record and data file that start-up must leave as it is.
	kept := map[string]fileID{}
	for _, f := range files {
		if !slices.ContainsFunc(append(append(leftoverTmp, leftoverTrash...), leftoverTemp), func(p string) bool {
			return f == p || strings.HasPrefix(f, p+"/")
		}) {
			kept[f] = identify(t, filepath.Join(base, f))
		}
	}

	e, stop := startEngineStop(t, pools...)
	ctx := context.Background()
	kubelet := t.TempDir()
	n, err := e.Node(storage.NodeConfig{KubeletDir: kubelet, NodeID: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Recover(ctx); err != nil {
		t.Fatalf("Recover: %v", err)
	}

	t.Run("volumes indexed as recorded", func(t *testing.T) {
		var want []string
		for _, v := range upgradeVolumes {
			want = append(want, v.id())
			_, r, err := e.Volume(v.id())
			if err != nil {
				t.Errorf("Volume %s (%s): %v", v.id(), v.name, err)
				continue
			}
			checkUpgradedRecord(t, base, v, r)
		}
		var got []string
		for _, r := range e.AllVolumes() {
			got = append(got, r.ID)
		}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("indexed volumes %v, want %v", got, want)
		}
		p, r, ok := e.Ephemeral(ephemeralKubeletID)
		if !ok || p.Name() != "files" || r.ID != storage.VolumeID("files", storage.EphemeralName(ephemeralKubeletID)) {
			t.Errorf("Ephemeral(%s) = %v, %v, want the inline volume of pool files", ephemeralKubeletID, r, ok)
		}
	})

	t.Run("snapshots indexed as recorded", func(t *testing.T) {
		var want []string
		for _, s := range upgradeSnapshots {
			want = append(want, s.id())
			p, hash, err := e.ResolveSnapshot(s.id())
			if err != nil {
				t.Fatal(err)
			}
			got, err := p.Snapshot(hash)
			if err != nil {
				t.Errorf("Snapshot %s (%s): %v", s.id(), s.name, err)
				continue
			}
			wantSnap := storage.Snapshot{
				Version: 1, ID: s.id(), Name: s.name, Pool: s.pool, SourceVolumeID: storage.VolumeID(s.pool, s.source),
				SizeBytes: s.size, AccessType: s.access, FSType: s.fsType, Ready: true,
				CreatedAt: recordedTime(t, filepath.Join(base, s.pool, "snapshots", hash, "record.json")),
			}
			if *got != wantSnap {
				t.Errorf("snapshot %s indexed as\n%+v, want\n%+v", s.name, *got, wantSnap)
			}
		}
		var got []string
		for _, s := range e.AllSnapshots() {
			got = append(got, s.ID)
		}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("indexed snapshots %v, want %v", got, want)
		}
	})

	t.Run("staging record read", func(t *testing.T) {
		p, _ := e.Pool("images")
		st, err := p.Staged(filepath.Base(stagedVolume))
		if err != nil || st == nil {
			t.Fatalf("Staged = %v, %v; want the recorded staging", st, err)
		}
		var raw map[string]string
		readJSON(t, filepath.Join(base, stagedVolume, "staged.json"), &raw)
		if st.Path != raw["path"] || st.Path == "" {
			t.Errorf("staging path %q, want %q", st.Path, raw["path"])
		}
	})

	t.Run("leftovers reconciled", func(t *testing.T) {
		for _, pool := range []string{"files", "images", "quotas"} {
			waitEmpty(t, filepath.Join(base, pool, "trash"))
			if entries, err := os.ReadDir(filepath.Join(base, pool, "tmp")); err != nil || len(entries) > 0 {
				t.Errorf("%s/tmp holds %d entries after start-up (err %v), want none", pool, len(entries), err)
			}
		}
		assertMissing(t, filepath.Join(base, leftoverTemp))
	})

	t.Run("future versions left alone", func(t *testing.T) {
		id := storage.VolumeID("files", "pvc-from-the-future")
		if _, _, err := e.Volume(id); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Volume of a version-2 record: %v, want ErrNotFound", err)
		}
		// What a record this Berth cannot read holds is never taken for gone.
		if err := e.DeleteVolume(ctx, id); !errors.Is(err, storage.ErrPrecondition) {
			t.Errorf("DeleteVolume of a version-2 record: %v, want ErrPrecondition, untouched", err)
		}
		// Its name is taken on disk: a create of it is refused.
		files, _ := e.Pool("files")
		if _, err := e.Provision(ctx, files, storage.ProvisionRequest{
			Name: "pvc-from-the-future", RequiredBytes: 4 * mib,
			Capabilities: []storage.Capability{{Access: storage.AccessMount, Mode: storage.SingleNodeWriter}},
		}); err == nil {
			t.Error("Provision over a version-2 record succeeded, want an error")
		}
		if entries, err := os.ReadDir(filepath.Join(base, "files", "tmp")); err != nil || len(entries) > 0 {
			t.Errorf("files/tmp holds %d entries after a failed create (err %v), want none", len(entries), err)
		}
		sid := storage.SnapshotID("files", "snap-from-the-future")
		p, hash, err := e.ResolveSnapshot(sid)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Snapshot(hash); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Snapshot of a version-2 record: %v, want ErrNotFound", err)
		}
		if err := e.DeleteSnapshot(ctx, sid); !errors.Is(err, storage.ErrPrecondition) {
			t.Errorf("DeleteSnapshot of a version-2 record: %v, want ErrPrecondition, untouched", err)
		}
	})

	images, _ := e.Pool("images")
	imagesServed := images.Health() == nil
	t.Run("repeated creates find the old volumes", func(t *testing.T) {
		for _, v := range upgradeVolumes {
			if v.ephemeral || v.pool == "quotas" || v.pool == "images" && !imagesServed {
				continue
			}
			p, _ := e.Pool(v.pool)
			r, err := e.Provision(ctx, p, storage.ProvisionRequest{
				Name: v.name, RequiredBytes: v.required, Parameters: v.params, Source: v.source,
				Capabilities: []storage.Capability{{Access: v.access, Mode: storage.SingleNodeWriter, FSType: v.capFS}},
			})
			if err != nil {
				t.Errorf("Provision %s again: %v", v.name, err)
				continue
			}
			checkUpgradedRecord(t, base, v, r)
		}
	})

	t.Run("records not rewritten", func(t *testing.T) { checkKept(t, base, kept) })

	t.Run("old objects used and deleted, new ones made", func(t *testing.T) {
		files, _ := e.Pool("files")
		// Restore and clone from the old release's snapshot and volume.
		restored := provision(t, e, files, "pvc-dir-restored-again", storage.AccessMount, "",
			&storage.Source{Kind: "snapshot", ID: storage.SnapshotID("files", "snap-dir-a")})
		assertContent(t, filepath.Join(files.DataPath(restored.Hash()), "hello.txt"), "written by a pod under 281c7c0\n")
		clone := provision(t, e, files, "pvc-dir-clone-again", storage.AccessMount, "",
			&storage.Source{Kind: "volume", ID: storage.VolumeID("files", "pvc-dir-a")})
		assertContent(t, filepath.Join(files.DataPath(clone.Hash()), "hello.txt"), "written by a pod under 281c7c0\n")
		snapshotReady(t, files, "snap-dir-new", hashOf("files", "pvc-dir-a"))
		provision(t, e, files, "pvc-dir-new", storage.AccessMount, "", nil)

		for _, id := range []string{storage.VolumeID("files", "pvc-dir-clone"), storage.VolumeID("files", storage.EphemeralName(ephemeralKubeletID))} {
			if err := e.DeleteVolume(ctx, id); err != nil {
				t.Fatalf("DeleteVolume %s: %v", id, err)
			}
			if _, _, err := e.Volume(id); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("Volume %s after its deletion: %v, want ErrNotFound", id, err)
			}
			assertMissing(t, filepath.Join(base, "files", "volumes", id[len(id)-32:]))
		}
		if err := e.DeleteSnapshot(ctx, storage.SnapshotID("files", "snap-dir-a")); err != nil {
			t.Fatalf("DeleteSnapshot: %v", err)
		}
		assertMissing(t, filepath.Join(base, "files", "snapshots", snapHashOf("files", "snap-dir-a")))

		if !imagesServed {
			t.Logf("image pool not served here (%v): its operations are not tried", images.Health())
			return
		}
		r := provision(t, e, images, "pvc-img-restored-again", storage.AccessMount, "",
			&storage.Source{Kind: "snapshot", ID: storage.SnapshotID("images", "snap-img-ext4")})
		if r.FSType != "ext4" {
			t.Errorf("restore of an old ext4 snapshot has fsType %q, want ext4", r.FSType)
		}
		provision(t, e, images, "pvc-img-block-clone", storage.AccessBlock, "",
			&storage.Source{Kind: "volume", ID: storage.VolumeID("images", "pvc-img-block")})
		provision(t, e, images, "pvc-img-new", storage.AccessMount, "xfs", nil)
		if err := e.DeleteVolume(ctx, storage.VolumeID("images", "pvc-img-xfs-clone")); err != nil {
			t.Fatalf("DeleteVolume: %v", err)
		}
		if err := e.DeleteSnapshot(ctx, storage.SnapshotID("images", "snap-img-block")); err != nil {
			t.Fatalf("DeleteSnapshot: %v", err)
		}
		assertMissing(t, filepath.Join(base, "images", "volumes", hashOf("images", "pvc-img-xfs-clone")))
	})

	// The future version's files are still as they were, after deletions around them.
	stop()
	for f := range kept {
		if !strings.HasPrefix(f, futureVolume) && !strings.HasPrefix(f, futureSnapshot) {
			delete(kept, f)
		}
	}
	checkKept(t, base, kept)

	// Old and new records side by side load again.
	want := map[string]bool{}
	for _, r := range e.AllVolumes() {
		want[r.ID] = true
	}
	e2 := startEngine(t, pools...)
	got := map[string]bool{}
	for _, r := range e2.AllVolumes() {
		got[r.ID] = true
	}
	if !maps.Equal(got, want) {
		t.Errorf("after a restart the index holds %v, want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
}

// provision creates a volume of 16 MiB in p as CreateVolume would, from source.
func provision(t *testing.T, e *storage.Engine, p *storage.Pool, name, access, fsType string, source *storage.Source) *storage.Record {
	t.Helper()
	params := map[string]string{}
	if fsType != "" {
		params["fsType"] = fsType
	}
	r, err := e.Provision(context.Background(), p, storage.ProvisionRequest{
		Name: name, RequiredBytes: 32 * mib, Parameters: params, Source: source,
		Capabilities: []storage.Capability{{Access: access, Mode: storage.SingleNodeWriter}},
	})
	if err != nil {
		t.Fatalf("Provision %s: %v", name, err)
	}
	return r
}

// checkUpgradedRecord compares a record the engine serves with what the release was
// asked for, and its creation time with the one in the file.
func checkUpgradedRecord(t *testing.T, base string, v upgradeVolume, r *storage.Record) {
	t.Helper()
	want := storage.Record{
		Version: 1, ID: v.id(), Name: v.name, Pool: v.pool, CapacityBytes: v.capacity,
		AccessType: v.access, FSType: v.fsType, Parameters: v.params, ContentSource: v.source,
		Ephemeral: v.ephemeral, ProjectID: v.projectID,
		CreatedAt: recordedTime(t, filepath.Join(base, v.pool, "volumes", hashOf(v.pool, v.name), "record.json")),
	}
	got := *r
	sameSource := (got.ContentSource == nil) == (want.ContentSource == nil) &&
		(got.ContentSource == nil || *got.ContentSource == *want.ContentSource)
	if !sameSource || !maps.Equal(got.Parameters, want.Parameters) || (got.Parameters == nil) != (want.Parameters == nil) {
		t.Errorf("volume %s: parameters %v, source %+v; want %v, %+v", v.name, got.Parameters, got.ContentSource, want.Parameters, want.ContentSource)
	}
	got.Parameters, got.ContentSource, want.Parameters, want.ContentSource = nil, nil, nil, nil
	if !got.CreatedAt.Equal(want.CreatedAt) {
		t.Errorf("volume %s: createdAt %v, want %v", v.name, got.CreatedAt, want.CreatedAt)
	}
	got.CreatedAt, want.CreatedAt = time.Time{}, time.Time{}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("volume %s indexed as\n%+v, want\n%+v", v.name, got, want)
	}
}

// recordedTime is the createdAt of a record file, read as the text it is.
func recordedTime(t *testing.T, path string) time.Time {
	t.Helper()
	var raw struct {
		CreatedAt string `json:"createdAt"`
	}
	readJSON(t, path, &raw)
	at, err := time.Parse(time.RFC3339Nano, raw.CreatedAt)
	if err != nil {
		t.Fatalf("%s: createdAt: %v", path, err)
	}
	return at
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// fileID is what a rewrite changes: the bytes, or the inode (a rename over it).
type fileID struct {
	data  string
	inode uint64
}

func identify(t *testing.T, path string) fileID {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fileID{data: string(data), inode: fi.Sys().(*syscall.Stat_t).Ino}
}

func checkKept(t *testing.T, base string, kept map[string]fileID) {
	t.Helper()
	for _, f := range slices.Sorted(maps.Keys(kept)) {
		if _, err := os.Lstat(filepath.Join(base, f)); err != nil {
			t.Errorf("%s: %v, want it kept", f, err)
			continue
		}
		if got := identify(t, filepath.Join(base, f)); got != kept[f] {
			t.Errorf("%s was rewritten (inode %d -> %d, bytes equal: %v)", f, kept[f].inode, got.inode, got.data == kept[f].data)
		}
	}
}

// loadFixture recreates a fixture's pools under base from its tree.txt: directories
// and small files with their recorded modes, image files as sparse files of their
// recorded size. It returns the paths of the files it copied.
func loadFixture(t *testing.T, fixture, base string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join(fixture, "tree.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var files []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 4 {
			t.Fatalf("tree.txt: bad line %q", sc.Text())
		}
		mode, err1 := strconv.ParseUint(fields[1], 8, 32)
		size, err2 := strconv.ParseInt(fields[2], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			t.Fatalf("tree.txt: %q: %v", sc.Text(), err)
		}
		rel := filepath.FromSlash(fields[3])
		path := filepath.Join(base, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil { // a pool's root
			t.Fatal(err)
		}
		switch fields[0] {
		case "d":
			err = os.Mkdir(path, 0o700)
		case "f":
			var data []byte
			if data, err = os.ReadFile(filepath.Join(fixture, rel)); err == nil {
				err = os.WriteFile(path, data, 0o600)
			}
			files = append(files, rel)
		case "i":
			var img *os.File
			if img, err = os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err == nil {
				err = errors.Join(img.Truncate(size), img.Close())
			}
		default:
			t.Fatalf("tree.txt: unknown entry type in %q", sc.Text())
		}
		if err == nil {
			err = os.Chmod(path, os.FileMode(mode))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return files
}

// checkFixtureCovered fails when the fixture holds a record this test does not
// expect: a release that adds objects to the fixture adds them to the tables here.
func checkFixtureCovered(t *testing.T, files []string) {
	t.Helper()
	known := map[string]bool{
		filepath.Join(futureVolume, "record.json"):   true,
		filepath.Join(futureSnapshot, "record.json"): true,
	}
	for _, v := range upgradeVolumes {
		known[filepath.Join(v.pool, "volumes", hashOf(v.pool, v.name), "record.json")] = true
	}
	for _, s := range upgradeSnapshots {
		known[filepath.Join(s.pool, "snapshots", snapHashOf(s.pool, s.name), "record.json")] = true
	}
	for _, p := range append(leftoverTmp, leftoverTrash...) {
		known[filepath.Join(p, "record.json")] = true
	}
	for _, f := range files {
		if filepath.Base(f) == "record.json" && !known[f] {
			t.Errorf("fixture record %s is not in the test's tables", f)
		}
		delete(known, f)
	}
	for f := range known {
		t.Errorf("fixture lacks %s", f)
	}
}
