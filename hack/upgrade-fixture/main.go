// Command upgrade-fixture captures the on-disk metadata that a released Berth driver
// writes, as a golden fixture for pkg/storage's upgrade test (upgrade_test.go).
//
// It runs the given driver binary as root on fresh pools in a temporary directory,
// drives it over its CSI socket (volumes of every access type and filesystem,
// snapshots, a restore, a clone, an expansion, an ephemeral inline volume, an image
// stage), then copies every small file of each pool into -out and lists the layout,
// with modes and sizes, in -out/tree.txt. Image files are not copied: tree.txt gives
// their size and the test recreates them sparse. The fixture's README.md (written by
// hand) says how it was made; pkg/storage/testdata/upgrade/281c7c0 is an example.
//
//	go build -o /tmp/berth-281c7c0 ./cmd/csi-driver   # in a worktree of the release
//	go run ./hack/upgrade-fixture -driver /tmp/berth-281c7c0 \
//	    -out pkg/storage/testdata/upgrade/281c7c0
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const mib = int64(1) << 20

// ephemeralID is the volume ID kubelet would choose for an inline volume.
const ephemeralID = "csi-0123abcd0123abcd0123abcd0123abcd0123abcd0123abcd0123abcd0123abcd"

// Pool names. They appear in every ID of the fixture.
const (
	dirPool   = "files"
	imagePool = "images"
	quotaPool = "quotas"
)

func main() {
	driver := flag.String("driver", "", "the released driver binary to run (required)")
	out := flag.String("out", "", "directory to write the fixture into; must not exist (required)")
	keep := flag.Bool("keep", false, "keep the temporary pools and the driver log")
	flag.Parse()
	if *driver == "" || *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		log.Fatal("run as root: the driver attaches loop devices and mounts an image")
	}
	if _, err := os.Stat(*out); err == nil {
		log.Fatalf("%s exists; remove it first", *out)
	}
	work, err := os.MkdirTemp("", "berth-upgrade-fixture-")
	if err != nil {
		log.Fatal(err)
	}
	if !*keep {
		defer os.RemoveAll(work)
	}
	if err := run(*driver, work, *out); err != nil {
		log.Printf("driver log: %s", filepath.Join(work, "driver.log"))
		if !*keep {
			os.RemoveAll(work)
		}
		log.Fatal(err)
	}
}

// site is the driver's world: its pools, kubelet directory and socket.
type site struct {
	work, kubelet, sock string
	ctrl                csi.ControllerClient
	node                csi.NodeClient
}

func (s *site) pool(name string) string { return filepath.Join(s.work, "pools", name) }

func run(driver, work, out string) error {
	s := &site{work: work, kubelet: filepath.Join(work, "kubelet"), sock: filepath.Join(work, "csi.sock")}
	if err := os.MkdirAll(s.kubelet, 0o750); err != nil {
		return err
	}
	cfg := fmt.Sprintf("pools:\n- name: %s\n  path: %s\n  kind: dir\n  overcommit: true\n- name: %s\n  path: %s\n  kind: image\n  overcommit: true\n",
		dirPool, s.pool(dirPool), imagePool, s.pool(imagePool))
	cfgPath := filepath.Join(work, "pools.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(work, "driver.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(driver, "--endpoint", "unix://"+s.sock, "--node-id", "upgrade-node",
		"--config", cfgPath, "--kubelet-dir", s.kubelet, "--mode", "all", "--registration", "off", "-v", "4")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			return nil
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("driver did not stop within 20s of SIGTERM")
		}
	}
	defer stop()

	conn, err := grpc.NewClient("unix://"+s.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	s.ctrl, s.node = csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := waitReady(ctx, csi.NewIdentityClient(conn)); err != nil {
		return err
	}

	unstage, unpublish, err := s.populate(ctx)
	if err != nil {
		return err
	}
	// Captured while the image is staged and the inline volume published, so that
	// staged.json and the inline volume's record are in the fixture; both are undone
	// afterwards, so no device or mount outlives the program.
	trees := map[string]tree{}
	for _, name := range []string{dirPool, imagePool} {
		if trees[name], err = capture(s.pool(name)); err != nil {
			return err
		}
	}
	if err := unpublish(); err != nil {
		return err
	}
	if err := unstage(); err != nil {
		return err
	}
	if err := stop(); err != nil {
		return err
	}
	crash(trees[dirPool], trees[imagePool])
	trees[quotaPool] = handmade(trees[dirPool])
	return write(out, trees)
}

func waitReady(ctx context.Context, id csi.IdentityClient) error {
	for {
		resp, err := id.Probe(ctx, &csi.ProbeRequest{})
		if err == nil && (resp.GetReady() == nil || resp.GetReady().GetValue()) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("driver not ready: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func mountCap(fsType string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func blockCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// params are a StorageClass's parameters with those external-provisioner adds under
// --extra-create-metadata, which Berth drops.
func params(pool string, kv ...string) map[string]string {
	m := map[string]string{
		"pool":                             pool,
		"csi.storage.k8s.io/pvc/name":      "claim",
		"csi.storage.k8s.io/pvc/namespace": "default",
		"csi.storage.k8s.io/pv/name":       "pv",
	}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func (s *site) create(ctx context.Context, name string, size int64, c *csi.VolumeCapability, p map[string]string, src *csi.VolumeContentSource) (*csi.Volume, error) {
	resp, err := s.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{c}, Parameters: p, VolumeContentSource: src,
	})
	if err != nil {
		return nil, fmt.Errorf("CreateVolume %s: %w", name, err)
	}
	log.Printf("volume %s: %s", name, resp.GetVolume().GetVolumeId())
	return resp.GetVolume(), nil
}

func (s *site) snapshot(ctx context.Context, name, source string) (*csi.Snapshot, error) {
	for {
		resp, err := s.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: source})
		if err != nil {
			return nil, fmt.Errorf("CreateSnapshot %s: %w", name, err)
		}
		if resp.GetSnapshot().GetReadyToUse() {
			log.Printf("snapshot %s: %s", name, resp.GetSnapshot().GetSnapshotId())
			return resp.GetSnapshot(), nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func fromSnapshot(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func fromVolume(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

// populate makes every kind of object the release can make here. It returns the
// calls that undo the image stage and the inline volume's publication.
func (s *site) populate(ctx context.Context) (unstage, unpublish func() error, err error) {
	// Dir pool: a volume with a file a pod wrote, its snapshot, a larger restore, a
	// clone, an expanded volume, and two volumes the crash below turns into leftovers.
	a, err := s.create(ctx, "pvc-dir-a", 16*mib, mountCap(""), params(dirPool), nil)
	if err != nil {
		return nil, nil, err
	}
	hello := filepath.Join(s.pool(dirPool), "volumes", hashOf(a.GetVolumeId()), "data", "hello.txt")
	if err := os.WriteFile(hello, []byte("written by a pod under 281c7c0\n"), 0o644); err != nil {
		return nil, nil, err
	}
	snap, err := s.snapshot(ctx, "snap-dir-a", a.GetVolumeId())
	if err != nil {
		return nil, nil, err
	}
	if _, err := s.create(ctx, "pvc-dir-restored", 32*mib, mountCap(""), params(dirPool), fromSnapshot(snap.GetSnapshotId())); err != nil {
		return nil, nil, err
	}
	if _, err := s.create(ctx, "pvc-dir-clone", 16*mib, mountCap(""), params(dirPool), fromVolume(a.GetVolumeId())); err != nil {
		return nil, nil, err
	}
	grown, err := s.create(ctx, "pvc-dir-grown", 8*mib, mountCap(""), params(dirPool), nil)
	if err != nil {
		return nil, nil, err
	}
	if _, err := s.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{
		VolumeId: grown.GetVolumeId(), VolumePath: filepath.Join(s.kubelet, "pods", "p", "volumes", "grown", "mount"),
		CapacityRange: &csi.CapacityRange{RequiredBytes: 12 * mib}, VolumeCapability: mountCap(""),
	}); err != nil {
		return nil, nil, fmt.Errorf("NodeExpandVolume: %w", err)
	}
	for _, name := range []string{"pvc-dir-crashed-create", "pvc-dir-crashed-delete"} {
		if _, err := s.create(ctx, name, 4*mib, mountCap(""), params(dirPool), nil); err != nil {
			return nil, nil, err
		}
	}
	if _, err := s.snapshot(ctx, "snap-dir-crashed-copy", a.GetVolumeId()); err != nil {
		return nil, nil, err
	}

	// Image pool: ext4 and xfs filesystems, a block volume, snapshots, a larger
	// restore, a clone.
	ext4, err := s.create(ctx, "pvc-img-ext4", 16*mib, mountCap(""), params(imagePool, "fsType", "ext4"), nil)
	if err != nil {
		return nil, nil, err
	}
	xfs, err := s.create(ctx, "pvc-img-xfs", 300*mib+1, mountCap(""), params(imagePool, "fsType", "xfs"), nil)
	if err != nil {
		return nil, nil, err
	}
	blk, err := s.create(ctx, "pvc-img-block", 8*mib+1, blockCap(), params(imagePool), nil)
	if err != nil {
		return nil, nil, err
	}
	isnap, err := s.snapshot(ctx, "snap-img-ext4", ext4.GetVolumeId())
	if err != nil {
		return nil, nil, err
	}
	if _, err := s.create(ctx, "pvc-img-restored", 24*mib, mountCap(""), params(imagePool), fromSnapshot(isnap.GetSnapshotId())); err != nil {
		return nil, nil, err
	}
	if _, err := s.create(ctx, "pvc-img-xfs-clone", 300*mib+1, mountCap("xfs"), params(imagePool, "fsType", "xfs"), fromVolume(xfs.GetVolumeId())); err != nil {
		return nil, nil, err
	}
	if _, err := s.snapshot(ctx, "snap-img-block", blk.GetVolumeId()); err != nil {
		return nil, nil, err
	}

	// Stage the ext4 image (formats it, attaches a loop device, writes staged.json).
	staging := filepath.Join(s.kubelet, "plugins", "kubernetes.io", "csi", "berth.csi.io", "0f1e2d3c", "globalmount")
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return nil, nil, err
	}
	if _, err := s.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
		VolumeId: ext4.GetVolumeId(), StagingTargetPath: staging, VolumeCapability: mountCap("ext4"),
	}); err != nil {
		return nil, nil, fmt.Errorf("NodeStageVolume: %w", err)
	}
	unstage = func() error {
		_, err := s.node.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: ext4.GetVolumeId(), StagingTargetPath: staging})
		if err != nil {
			return fmt.Errorf("NodeUnstageVolume: %w", err)
		}
		return nil
	}

	// An inline ephemeral volume, as kubelet publishes it.
	target := filepath.Join(s.kubelet, "pods", "6d1c0b2a", "volumes", "kubernetes.io~csi", "scratch", "mount")
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		_ = unstage()
		return nil, nil, err
	}
	if _, err := s.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: ephemeralID, TargetPath: target, VolumeCapability: mountCap(""),
		VolumeContext: map[string]string{
			"csi.storage.k8s.io/ephemeral":     "true",
			"csi.storage.k8s.io/pod.name":      "scratch-pod",
			"csi.storage.k8s.io/pod.namespace": "default",
			"size":                             "4Mi",
			"pool":                             dirPool,
		},
	}); err != nil {
		_ = unstage()
		return nil, nil, fmt.Errorf("NodePublishVolume (ephemeral): %w", err)
	}
	unpublish = func() error {
		_, err := s.node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: ephemeralID, TargetPath: target})
		if err != nil {
			return fmt.Errorf("NodeUnpublishVolume (ephemeral): %w", err)
		}
		return nil
	}
	return unstage, unpublish, nil
}

func hashOf(id string) string { return id[len(id)-32:] }

// nameHash is Berth's ID hash (docs/design.md, IDs): the first 128 bits of SHA-256
// over kind, NUL, name.
func nameHash(kind, name string) string {
	sum := sha256.Sum256([]byte(kind + "\x00" + name))
	return hex.EncodeToString(sum[:16])
}

// entry is one file or directory of a pool, relative to the pool's root.
type entry struct {
	dir  bool
	mode fs.FileMode
	size int64
	data []byte // nil for image files, which are not kept
}

type tree map[string]*entry

// capture reads a pool's layout; files named "image" keep only their size.
func capture(root string) (tree, error) {
	t := tree{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if rel == "." {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		e := &entry{dir: d.IsDir(), mode: fi.Mode().Perm(), size: fi.Size()}
		switch {
		case d.IsDir():
		case !fi.Mode().IsRegular():
			return fmt.Errorf("%s: not a file or directory", path)
		case d.Name() == "image":
		default:
			if e.data, err = os.ReadFile(path); err != nil {
				return err
			}
		}
		t[rel] = e
		return nil
	})
	return t, err
}

// move renames a subtree, as rename(2) would on disk.
func (t tree) move(from, to string) {
	for k, e := range t {
		if k == from || strings.HasPrefix(k, from+"/") {
			delete(t, k)
			t[to+k[len(from):]] = e
		}
	}
}

func (t tree) find(prefix, name string) string {
	for k := range t {
		if strings.HasPrefix(k, prefix) && strings.HasSuffix(k, "/record.json") {
			var r struct{ Name string }
			if json.Unmarshal(t[k].data, &r) == nil && r.Name == name {
				return filepath.Dir(k)
			}
		}
	}
	panic("no record for " + name)
}

// crash leaves what a driver killed at the wrong instant leaves: a create and a
// snapshot copy that never committed (their tmp/ entries, record and data written),
// a deletion acknowledged but not purged (its trash/ entry), and an expansion that
// wrote its temp record but never renamed it. Each is the rename the release makes,
// applied to the captured tree; the file contents are the release's own.
func crash(dir, image tree) {
	v := dir.find("volumes/", "pvc-dir-crashed-create")
	dir.move(v, "tmp/"+filepath.Base(v)+".5eed00000000c0de")
	v = dir.find("volumes/", "pvc-dir-crashed-delete")
	dir.move(v, "trash/"+filepath.Base(v)+".5eed00000000dead")
	v = dir.find("snapshots/", "snap-dir-crashed-copy")
	dir.move(v, "tmp/s"+filepath.Base(v)+".5eed00000000beef")

	// An expansion of pvc-dir-grown to 20 MiB that stopped before its rename.
	g := dir.find("volumes/", "pvc-dir-grown")
	rec := dir[g+"/record.json"]
	var r map[string]any
	if err := json.Unmarshal(rec.data, &r); err != nil {
		panic(err)
	}
	r["capacityBytes"] = 20 * mib
	data, _ := json.MarshalIndent(r, "", "  ")
	dir[g+"/.record.json.tmp4242-7"] = &entry{mode: 0o600, size: int64(len(data)), data: data}
}

// handmade adds what this machine cannot make, written by hand in the release's
// format: a record of a future version 2 (beside its data) and a snapshot record of
// version 2 in the dir pool, and a quota pool (this kernel has no quota support) with
// one volume carrying its projectID.
func handmade(dir tree) tree {
	futureHash := nameHash("volume", "pvc-from-the-future")
	futureSnapHash := nameHash("snapshot", "snap-from-the-future")
	future := `{
  "version": 2,
  "id": "b1-files-` + futureHash + `",
  "name": "pvc-from-the-future",
  "pool": "files",
  "capacityBytes": 4194304,
  "accessType": "mount",
  "layout": "v2-extents",
  "createdAt": "2031-01-01T00:00:00Z"
}`
	dir["volumes/"+futureHash] = &entry{dir: true, mode: 0o700}
	dir["volumes/"+futureHash+"/record.json"] = file(future, 0o600)
	dir["volumes/"+futureHash+"/data"] = &entry{dir: true, mode: 0o777}
	dir["volumes/"+futureHash+"/data/keep.txt"] = file("a newer Berth's data\n", 0o644)
	futureSnap := `{
  "version": 2,
  "id": "s1-files-` + futureSnapHash + `",
  "name": "snap-from-the-future",
  "pool": "files",
  "sourceVolumeID": "b1-files-` + futureHash + `",
  "sizeBytes": 4194304,
  "accessType": "mount",
  "createdAt": "2031-01-01T00:00:00Z"
}`
	dir["snapshots/"+futureSnapHash] = &entry{dir: true, mode: 0o700}
	dir["snapshots/"+futureSnapHash+"/record.json"] = file(futureSnap, 0o600)

	// A quota volume, as 281c7c0's quota kind writes it (record.go, quotakind.go):
	// the dir kind's fields, inodeLimit kept in parameters, and projectID.
	quotaHash := nameHash("volume", "pvc-quota-a")
	q := tree{
		"volumes":                        {dir: true, mode: 0o700},
		"snapshots":                      {dir: true, mode: 0o700},
		"tmp":                            {dir: true, mode: 0o700},
		"trash":                          {dir: true, mode: 0o700},
		"volumes/" + quotaHash:           {dir: true, mode: 0o700},
		"volumes/" + quotaHash + "/data": {dir: true, mode: 0o777},
		"volumes/" + quotaHash + "/record.json": file(`{
  "version": 1,
  "id": "b1-quotas-`+quotaHash+`",
  "name": "pvc-quota-a",
  "pool": "quotas",
  "capacityBytes": 10485760,
  "accessType": "mount",
  "parameters": {
    "inodeLimit": "1000",
    "pool": "quotas"
  },
  "createdAt": "2026-03-02T09:30:12.345678901Z",
  "projectID": 1048577
}`, 0o600),
	}
	return q
}

func file(s string, mode fs.FileMode) *entry {
	return &entry{mode: mode, size: int64(len(s)), data: []byte(s)}
}

// write stores each pool's files under out/<pool>/ and the layout in out/tree.txt:
// one line per entry, "<d|f|i> <mode> <size> <pool>/<path>" (i: an image, not kept).
func write(out string, trees map[string]tree) error {
	var lines []string
	for pool, t := range trees {
		for rel, e := range t {
			kind := "f"
			switch {
			case e.dir:
				kind = "d"
			case e.data == nil:
				kind = "i"
			}
			size := e.size
			if e.dir {
				size = 0
			}
			lines = append(lines, fmt.Sprintf("%s %04o %d %s", kind, e.mode, size, filepath.Join(pool, rel)))
			if e.data == nil {
				continue
			}
			path := filepath.Join(out, pool, rel)
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(path, e.data, 0o644); err != nil {
				return err
			}
		}
	}
	sort.Slice(lines, func(i, j int) bool { return strings.Fields(lines[i])[3] < strings.Fields(lines[j])[3] })
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, "tree.txt"), []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}
