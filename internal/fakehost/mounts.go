package fakehost

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/berth-csi/berth/pkg/mounter"
	"golang.org/x/sys/unix"
)

// mounts is the fake's storage.Mounter.
type mounts struct{ h *Host }

func (m mounts) Bind(source, target string, o mounter.Options) error {
	if hook := m.h.begin("Bind", source, target).Bind; hook != nil {
		if err := hook(source, target); err != nil {
			return err
		}
	}
	return m.h.bind(source, target, o, false)
}

func (m mounts) BindBlock(source, target string, o mounter.Options) error {
	if hook := m.h.begin("BindBlock", source, target).BindBlock; hook != nil {
		if err := hook(source, target); err != nil {
			return err
		}
	}
	if o.Flags&unix.MS_NODEV != 0 {
		return fmt.Errorf("bind block device %s: %w", source, mounter.ErrFlagNotAllowed)
	}
	return m.h.bind(source, target, o, true)
}

// bind records a bind mount of source on target, showing what source shows.
func (h *Host) bind(source, target string, o mounter.Options, block bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	src, err := h.resolve(source)
	if err != nil {
		return fmt.Errorf("bind %s on %s: %w", source, target, err)
	}
	_, isDev := h.deviceAt(src)
	if block != isDev {
		return fmt.Errorf("bind %s on %s: a bound loop device is bound with BindBlock, and only it", source, target)
	}
	// A directory is bound on a directory, a file or a device on a regular file.
	dir := !block
	if fi, err := os.Stat(src); err == nil && !fi.IsDir() {
		dir = false
	}
	tgt, err := h.existing(target, dir)
	if err != nil {
		return fmt.Errorf("bind %s on %s: %w", source, target, err)
	}
	where, fs := h.locate(src)
	flags := unix.MS_NOSUID | o.Flags
	if !block {
		flags |= unix.MS_NODEV
	}
	e := &entry{info: where, fs: fs}
	if block {
		e.dev = src
	}
	e.info.ReadOnly = where.ReadOnly || o.ReadOnly || o.Flags&unix.MS_RDONLY != 0
	h.add(e, tgt, flags)
	return nil
}

// Unmount removes the top-most mount at target and, as a lazy unmount does, the
// mounts made on top of it below target. Nothing mounted there is success.
func (m mounts) Unmount(target string) error {
	if hook := m.h.begin("Unmount", target).Unmount; hook != nil {
		if err := hook(target); err != nil {
			return err
		}
	}
	h := m.h
	h.mu.Lock()
	defer h.mu.Unlock()
	top := h.at(abs(target))
	if top == nil {
		return nil
	}
	kept := h.mounts[:0]
	for _, e := range h.mounts {
		if e != top && !(e.id > top.id && under(top.info.Mountpoint, e.info.Mountpoint)) {
			kept = append(kept, e)
		}
	}
	clear(h.mounts[len(kept):])
	h.mounts = kept
	return nil
}

// IsMountPoint answers from the table; a path whose filesystem died (Kill) is an
// error wrapping mounter.ErrStale, true when the dead mount is at target itself.
func (m mounts) IsMountPoint(target string) (bool, error) {
	if hook := m.h.hook().IsMountPoint; hook != nil {
		if err := hook(target); err != nil {
			return false, err
		}
	}
	h := m.h
	h.mu.Lock()
	defer h.mu.Unlock()
	p := abs(target)
	if e := h.holder(p); e != nil {
		if e.stale {
			return e.info.Mountpoint == p, fmt.Errorf("%w: statx %s: %w", mounter.ErrStale, target, unix.ENOTCONN)
		}
		if e.info.Mountpoint == p {
			return true, nil
		}
	}
	if _, err := os.Lstat(p); err != nil {
		return false, err
	}
	return false, nil
}

func (m mounts) At(target string) (*mounter.MountInfo, error) {
	if hook := m.h.hook().At; hook != nil {
		if err := hook(target); err != nil {
			return nil, err
		}
	}
	m.h.mu.Lock()
	defer m.h.mu.Unlock()
	if e := m.h.at(abs(target)); e != nil {
		info := e.info
		return &info, nil
	}
	return nil, nil
}

// SameSource reports whether mount mi shows path: the same device and the same path
// inside it as a bind of path would show.
func (m mounts) SameSource(mi *mounter.MountInfo, path string) (bool, error) {
	if hook := m.h.hook().SameSource; hook != nil {
		if err := hook(path); err != nil {
			return false, err
		}
	}
	if mi == nil {
		return false, nil
	}
	m.h.mu.Lock()
	defer m.h.mu.Unlock()
	p, err := m.h.resolve(path)
	if err != nil {
		return false, err
	}
	where, _ := m.h.locate(p)
	return where.Major == mi.Major && where.Minor == mi.Minor && where.Root == filepath.Clean(mi.Root), nil
}

// All lists the table in mount order.
func (m mounts) All() ([]*mounter.MountInfo, error) {
	if hook := m.h.hook().All; hook != nil {
		if err := hook(); err != nil {
			return nil, err
		}
	}
	m.h.mu.Lock()
	defer m.h.mu.Unlock()
	out := make([]*mounter.MountInfo, 0, len(m.h.mounts))
	for _, e := range m.h.mounts {
		info := e.info
		out = append(out, &info)
	}
	return out, nil
}

// Locate is what a bind of dir would show: 0, 0 and dir (resolved) for a directory of
// the host's filesystem.
func (m mounts) Locate(dir string) (int, int, string, error) {
	if hook := m.h.hook().Locate; hook != nil {
		if err := hook(dir); err != nil {
			return 0, 0, "", err
		}
	}
	m.h.mu.Lock()
	defer m.h.mu.Unlock()
	p, err := m.h.resolve(dir)
	if err != nil {
		return 0, 0, "", err
	}
	where, _ := m.h.locate(p)
	return where.Major, where.Minor, where.Root, nil
}
