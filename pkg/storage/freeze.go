package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/berth-csi/berth/pkg/storage/meta"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// FIFREEZE and FITHAW (linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int)).
const (
	fiFreeze = 0xc0045877
	fiThaw   = 0xc0045878
)

// frozenFile records, beside a volume's record, that its staged filesystem is being
// frozen: it is written (durably) before FIFREEZE and removed after FITHAW, so a
// driver killed in between leaves a record that start-up finds and thaws. A frozen
// filesystem left behind would hang every writer of the pod until someone thaws it.
const frozenFile = "frozen.json"

// freezeRecord is what frozenFile holds.
type freezeRecord struct {
	Path string `json:"path"` // the staging mount that was frozen
}

// freeze freezes the filesystem of a staged image volume (FIFREEZE on its staging
// mount) so a copy of its image is consistent; the returned func thaws it. A volume
// that is not staged, or a block volume, needs nothing. A filesystem that cannot be
// frozen is copied unfrozen, said in the log (a group snapshot, which must not,
// calls freezeStaged).
func (p *Pool) freeze(ctx context.Context, r *Record) func() {
	thaw, err := p.freezeStaged(ctx, r)
	if err != nil {
		klog.FromContext(ctx).Error(err, "Cannot freeze staged filesystem; copying unfrozen", "volumeID", r.ID)
		return func() {}
	}
	return thaw
}

// freezeStaged is freeze, with an error when the volume's filesystem is mounted and
// cannot be frozen. Nothing is frozen when the volume is not staged, is a block
// volume, or its staging path does not hold its filesystem.
func (p *Pool) freezeStaged(ctx context.Context, r *Record) (func(), error) {
	logger := klog.FromContext(ctx).WithValues("volumeID", r.ID)
	st, err := p.Staged(r.Hash())
	if err != nil {
		return nil, fmt.Errorf("volume %s: staging record: %w", r.ID, err)
	}
	if st == nil || r.AccessType != AccessMount {
		return func() {}, nil
	}
	fd, err := unix.Open(st.Path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return func() {}, nil // nothing mounted there: no writer to pause
	}
	if err != nil {
		return nil, fmt.Errorf("volume %s: open staged filesystem %s to freeze it: %w", r.ID, st.Path, err)
	}
	// A staging record outlives its mount (a stage that failed before mounting, a
	// node rebooted since): the path then lies on the host's filesystem, which must
	// never be frozen (the copy itself may write there). Only the filesystem on the
	// image's own loop device is; one that is not mounted has no writer to pause.
	if !p.onImageDevice(fd, p.ImagePath(r.Hash())) {
		unix.Close(fd)
		return func() {}, nil
	}
	volDir := p.VolumeDir(r.Hash())
	data, _ := json.Marshal(freezeRecord{Path: st.Path})
	if err := meta.WriteFile(volDir, frozenFile, data); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("volume %s: record the freeze: %w", r.ID, err)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fiFreeze, 0); e != 0 {
		unix.Close(fd)
		p.clearFrozen(ctx, r.ID, volDir)
		return nil, fmt.Errorf("volume %s: freeze staged filesystem %s: %w", r.ID, st.Path, e)
	}
	p.frozen.Add(1)
	logger.V(4).Info("Filesystem frozen for a copy", "stagingPath", st.Path)
	return func() {
		defer p.frozen.Add(-1)
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fiThaw, 0); e != 0 {
			logger.Error(e, "Cannot thaw staged filesystem")
		} else {
			logger.V(4).Info("Filesystem thawed", "stagingPath", st.Path)
			p.clearFrozen(ctx, r.ID, volDir)
		}
		unix.Close(fd)
	}, nil
}

// clearFrozen removes the freeze record once the filesystem is thawed.
func (p *Pool) clearFrozen(ctx context.Context, id, volDir string) {
	err := os.Remove(filepath.Join(volDir, frozenFile))
	if err == nil {
		err = meta.SyncDir(volDir)
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		klog.FromContext(ctx).Error(err, "Cannot remove the freeze record", "volumeID", id)
	}
}

// thawLeftovers thaws, at start-up, the filesystems a killed driver left frozen: for
// every committed volume with a freeze record, FITHAW on the recorded staging mount
// when that is still the filesystem of the volume's own image (EINVAL: it was not
// frozen, nothing to do), then the record goes.
func (p *Pool) thawLeftovers(ctx context.Context) {
	if _, isDir := p.backend.Data(); isDir {
		return // only a staged image's filesystem is ever frozen: no stat per volume here
	}
	p.mu.Lock()
	hashes := make([]string, 0, len(p.index))
	for hash := range p.index {
		hashes = append(hashes, hash)
	}
	p.mu.Unlock()
	for _, hash := range hashes {
		volDir := p.VolumeDir(hash)
		var fr freezeRecord
		found, err := readJSON(filepath.Join(volDir, frozenFile), &fr)
		if !found {
			continue
		}
		logger := klog.FromContext(ctx).WithValues("pool", p.cfg.Name, "volumeHash", hash)
		if err != nil {
			logger.Error(err, "Unreadable freeze record left alone")
			continue
		}
		if err := p.thaw(fr.Path, p.ImagePath(hash)); err != nil {
			logger.Error(err, "Cannot thaw a filesystem left frozen by an interrupted copy", "stagingPath", fr.Path)
			continue
		}
		logger.Info("Thawed the filesystem an interrupted copy left frozen", "stagingPath", fr.Path)
		p.clearFrozen(ctx, hash, volDir)
	}
}

// thaw undoes a freeze of the filesystem mounted at path, if it is the one on
// image's loop device and is frozen.
func (p *Pool) thaw(path, image string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil // unstaged since: nothing mounted there is ours
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if !p.onImageDevice(fd, image) {
		return nil
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fiThaw, 0); e != 0 && e != unix.EINVAL {
		return e
	}
	return nil
}

// readJSON decodes the JSON file at path into v; found is false when there is no
// such file (and err nil), true otherwise.
func readJSON(path string, v any) (found bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err == nil {
		err = json.Unmarshal(data, v)
	}
	return true, err
}

// onImageDevice reports whether the open directory fd lies on the filesystem of the
// loop device backing image.
func (p *Pool) onImageDevice(fd int, image string) bool {
	dev, err := p.host.Loops.Find(image)
	if err != nil || dev == nil {
		return false
	}
	major, minor, err := p.host.Loops.DevNumber(dev)
	if err != nil {
		return false
	}
	var dir unix.Stat_t
	if unix.Fstat(fd, &dir) != nil {
		return false
	}
	return int(unix.Major(dir.Dev)) == major && int(unix.Minor(dir.Dev)) == minor
}
