package crash

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/pkg/mounter"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/loop"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
)

// imagePool is the name of the image pool of an image site.
const imagePool = "img"

const (
	// imageSize is the size the image volumes are created with: xfs needs
	// 300 MiB (its 64 MiB minimum log), and xfs is the filesystem that grows
	// online without CAP_SYS_RESOURCE.
	imageSize = 320 << 20
	// growStep is what each NodeExpandVolume adds.
	growStep = 16 << 20
)

// newImageSite is newSite with one image pool, "img". Its clean-up, which
// runs after the driver has been killed (clean-ups run last first), unmounts
// whatever is mounted under the site's directory and detaches every loop
// device backed by the pool, so that a failing test leaves nothing behind.
func newImageSite(t *testing.T, bin string) *site {
	t.Helper()
	s := newSiteWith(t, bin, imagePool, "image")
	t.Cleanup(func() {
		if err := unmountUnder(s.dir()); err != nil {
			t.Errorf("clean-up: %v", err)
		}
		if err := detachPool(s.pool); err != nil {
			t.Errorf("clean-up: %v", err)
		}
	})
	return s
}

func (s *site) dir() string { return filepath.Dir(s.pool) }

func (p *proc) node() csi.NodeClient { return csi.NewNodeClient(p.conn) }

// offlineEngine opens the site's pools in this process, as the driver would,
// for a test to put them in a state the driver could have left. Call it only
// while no driver runs; the returned function stops the engine.
func (s *site) offlineEngine(t *testing.T) (*storage.Engine, func()) {
	t.Helper()
	cfg, err := storage.LoadConfig(s.config)
	if err != nil {
		t.Fatal(err)
	}
	e, err := storage.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	if err := e.Start(ctx); err != nil {
		cancel()
		t.Fatalf("start an engine in the test: %v", err)
	}
	return e, cancel
}

// imageVolume is one image volume and the paths kubelet would use for it.
type imageVolume struct {
	id, hash string
	image    string // the backing file
	staging  string
	target   string
	capacity int64 // the last acknowledged capacity
}

var xfsCapability = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

// createImageVolume creates an xfs image volume of imageSize and lays out
// the parents kubelet creates for its staging and target paths.
func createImageVolume(t *testing.T, p *proc, name string) *imageVolume {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	resp, err := p.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name:               name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: imageSize},
		VolumeCapabilities: []*csi.VolumeCapability{xfsCapability},
		Parameters:         map[string]string{"pool": imagePool, storage.ParamFSType: "xfs"},
	})
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
	id := resp.GetVolume().GetVolumeId()
	pid, err := storage.ParseVolumeID(id)
	if err != nil {
		t.Fatalf("CreateVolume %s returned %q: %v", name, id, err)
	}
	s := p.site
	v := &imageVolume{
		id:       id,
		hash:     pid.Hash,
		image:    filepath.Join(s.pool, "volumes", pid.Hash, storage.ImageFile),
		staging:  filepath.Join(s.kubelet, "plugins", "kubernetes.io", "csi", "berth", pid.Hash, "globalmount"),
		target:   filepath.Join(s.kubelet, "pods", "0000-"+name, "volumes", "kubernetes.io~csi", name, "mount"),
		capacity: resp.GetVolume().GetCapacityBytes(),
	}
	if v.capacity < imageSize {
		t.Fatalf("CreateVolume %s: capacity %d, asked for %d", name, v.capacity, imageSize)
	}
	for _, d := range []string{filepath.Dir(v.staging), filepath.Dir(v.target)} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

// The node calls of the staging cycle, as kubelet makes them.
const (
	opStage     = "NodeStageVolume"
	opPublish   = "NodePublishVolume"
	opExpand    = "NodeExpandVolume"
	opUnpublish = "NodeUnpublishVolume"
	opUnstage   = "NodeUnstageVolume"
)

// call makes one node call on v; for opExpand, size is required_bytes and the
// capacity the driver answered is returned.
func (v *imageVolume) call(ctx context.Context, node csi.NodeClient, op string, size int64) (int64, error) {
	var err error
	switch op {
	case opStage:
		_, err = node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
			VolumeId: v.id, StagingTargetPath: v.staging, VolumeCapability: xfsCapability,
		})
	case opPublish:
		_, err = node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
			VolumeId: v.id, StagingTargetPath: v.staging, TargetPath: v.target, VolumeCapability: xfsCapability,
		})
	case opExpand:
		var resp *csi.NodeExpandVolumeResponse
		resp, err = node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{
			VolumeId: v.id, VolumePath: v.target, StagingTargetPath: v.staging,
			CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapability: xfsCapability,
		})
		if err == nil {
			return resp.GetCapacityBytes(), nil
		}
	case opUnpublish:
		_, err = node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target})
	case opUnstage:
		_, err = node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging})
	default:
		panic("unknown op " + op)
	}
	return 0, err
}

// mustCall makes a call that must succeed at once (no kill is under way).
func (v *imageVolume) mustCall(t *testing.T, p *proc, op string, size int64) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	got, err := v.call(ctx, p.node(), op, size)
	if err != nil {
		t.Fatalf("%s %s: %v", op, v.id, err)
	}
	return got
}

// recordCapacity reads the capacity in the volume's record.json.
func (v *imageVolume) recordCapacity(s *site) (int64, error) {
	data, err := os.ReadFile(filepath.Join(s.pool, "volumes", v.hash, "record.json"))
	if err != nil {
		return 0, err
	}
	var r struct {
		CapacityBytes int64 `json:"capacityBytes"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return 0, err
	}
	return r.CapacityBytes, nil
}

// stagedRecord reports whether the volume's staging record exists.
func (v *imageVolume) stagedRecord(s *site) bool {
	_, err := os.Lstat(filepath.Join(s.pool, "volumes", v.hash, "staged.json"))
	return err == nil
}

// kernelState is what the kernel and the pool show of an image volume.
type kernelState struct {
	devices       []*loop.Device // loop devices backed by files of the pool
	dev           *loop.Device   // the one backed by the volume's image, if any
	stagingMount  bool           // the staging path is a mount of dev's filesystem
	targetMount   bool           // the target path is a mount of dev's filesystem
	imageBytes    int64
	deviceBytes   int64 // 0 without a device
	stagingFSSize int64 // statfs total of the staging mount, 0 without one
}

func (v *imageVolume) state(s *site) (*kernelState, error) {
	devs, err := loop.List(s.pool)
	if err != nil {
		return nil, err
	}
	k := &kernelState{devices: devs}
	var st unix.Stat_t
	if err := unix.Stat(v.image, &st); err != nil {
		return nil, fmt.Errorf("stat image: %w", err)
	}
	k.imageBytes = st.Size
	for _, d := range devs {
		if d.Dev == st.Dev && d.Inode == st.Ino {
			if k.dev != nil {
				return nil, fmt.Errorf("image %s is backed by two loop devices, %s and %s", v.image, k.dev.Path, d.Path)
			}
			k.dev = d
		}
	}
	if k.dev == nil {
		return k, nil
	}
	if k.deviceBytes, err = loop.Size(k.dev.Path); err != nil {
		return nil, err
	}
	var dst unix.Stat_t
	if err := unix.Stat(k.dev.Path, &dst); err != nil {
		return nil, err
	}
	mounts, err := mounter.All()
	if err != nil {
		return nil, err
	}
	major, minor := int(unix.Major(dst.Rdev)), int(unix.Minor(dst.Rdev))
	k.stagingMount = mountedFrom(mounts, v.staging, major, minor)
	k.targetMount = mountedFrom(mounts, v.target, major, minor)
	if k.stagingMount {
		if k.stagingFSSize, err = fsBytes(v.staging); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// fsBytes is the total size statfs reports for the filesystem at path.
func fsBytes(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return int64(st.Blocks) * st.Bsize, nil
}

// mountedFrom reports whether the topmost mount at point is of device
// major:minor.
func mountedFrom(ms []*mounter.MountInfo, point string, major, minor int) bool {
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].Mountpoint == point {
			return ms[i].Major == major && ms[i].Minor == minor
		}
	}
	return false
}

func isMountPoint(point string) bool {
	ms, err := mounter.All()
	if err != nil {
		return false
	}
	return slices.ContainsFunc(ms, func(m *mounter.MountInfo) bool { return m.Mountpoint == point })
}

// unmountUnder unmounts every mount at or below root, deepest first, lazily
// when a plain unmount is refused.
func unmountUnder(root string) error {
	root = filepath.Clean(root)
	var errs []error
	for range 16 {
		ms, err := mounter.All()
		if err != nil {
			return err
		}
		var points []string
		for _, m := range ms {
			if m.Mountpoint == root || strings.HasPrefix(m.Mountpoint, root+"/") {
				points = append(points, m.Mountpoint)
			}
		}
		if len(points) == 0 {
			return nil
		}
		slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
		errs = errs[:0]
		for _, p := range points {
			if err := unix.Unmount(p, unix.UMOUNT_NOFOLLOW); err != nil {
				if err := unix.Unmount(p, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil && err != unix.EINVAL && err != unix.ENOENT {
					errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
				}
			}
		}
	}
	return fmt.Errorf("mounts remain under %s: %w", root, errors.Join(errs...))
}

// detachPool detaches every loop device backed by a file under pool,
// waiting up to 5 s for lazily unmounted filesystems to let go.
func detachPool(pool string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		devs, err := loop.List(pool)
		if err != nil {
			return err
		}
		var errs []error
		for _, d := range devs {
			errs = append(errs, loop.Detach(d))
		}
		err = errors.Join(errs...)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dataFile is a file the test wrote through a target path and fsynced.
type dataFile struct {
	name string
	sum  [sha256.Size]byte
}

// writeDurable writes data to dir/name, fsyncs the file and the directory,
// and reads it back.
func writeDurable(dir, name string, data []byte) (dataFile, error) {
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return dataFile{}, err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return dataFile{}, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return dataFile{}, err
	}
	if err := f.Close(); err != nil {
		return dataFile{}, err
	}
	if err := syncDir(dir); err != nil {
		return dataFile{}, err
	}
	back, err := os.ReadFile(path)
	if err != nil {
		return dataFile{}, err
	}
	if !bytes.Equal(back, data) {
		return dataFile{}, fmt.Errorf("%s reads back %d bytes that differ from the %d written", path, len(back), len(data))
	}
	return dataFile{name: name, sum: sha256.Sum256(data)}, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		d.Close()
		return err
	}
	return d.Close()
}

// checkFiles reads every file back from dir and compares its checksum.
func checkFiles(dir string, files []dataFile) error {
	var errs []error
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(dir, f.name))
		switch {
		case err != nil:
			errs = append(errs, err)
		case sha256.Sum256(data) != f.sum:
			errs = append(errs, fmt.Errorf("%s: content changed (%d bytes read)", f.name, len(data)))
		}
	}
	return errors.Join(errs...)
}

// pathExists reports whether path exists (without following a final link).
func pathExists(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, fs.ErrNotExist)
}
