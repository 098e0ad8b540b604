package fakehost

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/berth-csi/berth/pkg/mounter"
	"golang.org/x/sys/unix"
)

// The mount table: what a path shows, and mounts the engine did not make.

// HostFSType is the filesystem type (and source) a bind of a host directory shows:
// the host's own filesystem, device 0:0, whose paths are the paths themselves.
const HostFSType = "fakehostfs"

// Filesystem identities, for Kill: the host's and the device directory's never die.
const (
	hostFS = 0
	devFS  = -1
	// devMinor is the device directory's minor (devtmpfs is 0:5 on most machines);
	// filesystems mounted without a device (MountFS) get minors from fsMinors on.
	devMinor = 5
	fsMinors = 100
)

// entry is one mount of the fake table.
type entry struct {
	info  mounter.MountInfo
	id    int
	fs    int    // the filesystem shown: hostFS, devFS, or one FormatAndMount or MountFS made
	dev   string // BindBlock: the device bound
	stale bool
}

// add puts e on top of the mounts at target, its per-mount options made of flags.
func (h *Host) add(e *entry, target string, flags uintptr) {
	h.nextID++
	e.id = h.nextID
	e.info.Mountpoint = target
	e.info.Options = options(e.info.ReadOnly, flags)
	e.info.Optional = ""
	h.mounts = append(h.mounts, e)
}

// existing resolves a mount target, which must exist on disk as a directory (dir) or
// a regular file.
func (h *Host) existing(target string, dir bool) (string, error) {
	p, err := h.resolve(target)
	if err != nil {
		return "", err
	}
	fi, err := os.Lstat(p)
	switch {
	case err != nil:
		return "", err
	case dir && !fi.IsDir():
		return "", &os.PathError{Op: "mount", Path: target, Err: unix.ENOTDIR}
	case !dir && !fi.Mode().IsRegular():
		return "", fmt.Errorf("target %s is not a regular file", target)
	}
	return p, nil
}

// MountFS mounts a filesystem with no fake device (a shared pool's, as mount(8) would
// for the engine's Run, or one an operator mounted) at target, an existing directory.
func (h *Host) MountFS(source, target, fsType string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	tgt, err := h.existing(target, true)
	if err != nil {
		return fmt.Errorf("mount %s on %s: %w", source, target, err)
	}
	h.nextFS++
	h.add(&entry{fs: h.nextFS, info: mounter.MountInfo{Root: "/", Source: source, FSType: fsType, Minor: fsMinors + h.nextFS}},
		tgt, unix.MS_NOSUID|unix.MS_NODEV)
	return nil
}

// Kill makes the filesystem of the top-most mount at target stop answering, as a
// FUSE mount whose server died: that mount, and every bind of the same filesystem,
// is stale until unmounted. A bind of a host directory dies alone.
func (h *Host) Kill(target string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	top := h.at(abs(target))
	if top == nil {
		return fmt.Errorf("kill %s: not a mount point", target)
	}
	for _, e := range h.mounts {
		if e == top || top.fs > 0 && e.fs == top.fs {
			e.stale = true
		}
	}
	return nil
}

// at is the top-most mount at mountpoint p, nil when none; the caller holds h.mu.
func (h *Host) at(p string) *entry {
	for i := len(h.mounts) - 1; i >= 0; i-- {
		if h.mounts[i].info.Mountpoint == p {
			return h.mounts[i]
		}
	}
	return nil
}

// holder is the mount through which path p is reached: of the mounts at p or at one of
// its parents that no later mount covers, the deepest. nil: the host's filesystem.
func (h *Host) holder(p string) *entry {
	var best *entry
	for i, e := range h.mounts {
		if !under(e.info.Mountpoint, p) || best != nil && len(e.info.Mountpoint) < len(best.info.Mountpoint) {
			continue
		}
		covered := false
		for _, later := range h.mounts[i+1:] {
			covered = covered || under(later.info.Mountpoint, e.info.Mountpoint)
		}
		if !covered {
			best = e
		}
	}
	return best
}

// locate is what a bind of the resolved path p shows, and p's filesystem.
func (h *Host) locate(p string) (mounter.MountInfo, int) {
	if e := h.holder(p); e != nil {
		where := e.info
		where.Root = filepath.Join(e.info.Root, strings.TrimPrefix(p, e.info.Mountpoint))
		return where, e.fs
	}
	if under(h.devDir, p) {
		return mounter.MountInfo{Root: filepath.Join("/", strings.TrimPrefix(p, h.devDir)), Source: "devtmpfs", FSType: "devtmpfs", Minor: devMinor}, devFS
	}
	return mounter.MountInfo{Root: p, Source: HostFSType, FSType: HostFSType}, hostFS
}

// resolve makes path absolute and resolves its symlinks, as the kernel does for a
// mount's source: the magic links of /proc/self/fd lead to the directory they hold.
// A path through a dead filesystem is ENOTCONN; a device node is taken as it is (the
// fake creates none); a path inside a fake mount that is not on disk is taken as it
// is too, since what fake filesystems hold is not modelled.
func (h *Host) resolve(path string) (string, error) {
	p := abs(path)
	if e := h.holder(p); e != nil && e.stale {
		return "", &os.PathError{Op: "stat", Path: path, Err: unix.ENOTCONN}
	}
	if under(h.devDir, p) {
		return p, nil
	}
	real, err := filepath.EvalSymlinks(p)
	if errors.Is(err, os.ErrNotExist) && h.holder(p) != nil {
		return p, nil
	}
	return real, err
}

// abs is path absolute and clean.
func abs(path string) string {
	if p, err := filepath.Abs(path); err == nil {
		return p
	}
	return filepath.Clean(path)
}

// under reports whether p is dir or lies below it.
func under(dir, p string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// options renders per-mount flags as mountinfo shows them.
func options(readOnly bool, flags uintptr) string {
	out := []string{"rw"}
	if readOnly {
		out[0] = "ro"
	}
	for _, f := range []struct {
		flag uintptr
		name string
	}{
		{unix.MS_NOSUID, "nosuid"}, {unix.MS_NODEV, "nodev"}, {unix.MS_NOEXEC, "noexec"},
		{unix.MS_SYNCHRONOUS, "sync"}, {unix.MS_DIRSYNC, "dirsync"}, {unix.MS_NOATIME, "noatime"},
		{unix.MS_NODIRATIME, "nodiratime"}, {unix.MS_RELATIME, "relatime"}, {unix.MS_STRICTATIME, "strictatime"},
	} {
		if flags&f.flag != 0 {
			out = append(out, f.name)
		}
	}
	return strings.Join(out, ",")
}
