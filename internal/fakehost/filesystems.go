package fakehost

import (
	"fmt"
	"os"
	"slices"

	"github.com/berth-csi/berth/pkg/mounter"
	"golang.org/x/sys/unix"
)

// The filesystems on fake devices: formatted, mounted and grown by the engine through
// package mounter's tools on a real machine.

// Filesystem is what FormatAndMount wrote into an image file.
type Filesystem struct {
	Type string
	Size int64 // grown by GrowFS and GrowExt4Offline to the device's size
}

// FormatAndMount mounts the bound device at target, an existing directory, and
// formats it first when its file holds no filesystem; a filesystem of another type is
// refused, as mount(8) refuses it.
func (m mounts) FormatAndMount(dev, target, fsType string, options []string) error {
	if hook := m.h.begin("FormatAndMount", dev, target, fsType).FormatAndMount; hook != nil {
		if err := hook(dev, target, fsType); err != nil {
			return err
		}
	}
	h := m.h
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.deviceAt(dev)
	if !ok {
		return fmt.Errorf("format and mount %s: %w", dev, &os.PathError{Op: "open", Path: dev, Err: unix.ENXIO})
	}
	tgt, err := h.existing(target, true)
	if err != nil {
		return fmt.Errorf("format and mount %s at %s: %w", dev, target, err)
	}
	id := fileID{d.dev.Dev, d.dev.Inode}
	fs := h.fs[id]
	if fs == nil {
		fs = &Filesystem{Type: fsType, Size: d.size}
		h.fs[id] = fs
	}
	if fs.Type != fsType {
		return fmt.Errorf("format and mount %s (%s) at %s: the device holds %s", dev, fsType, target, fs.Type)
	}
	h.nextFS++
	h.add(&entry{fs: h.nextFS, info: mounter.MountInfo{
		Root: "/", Source: dev, FSType: fsType, Major: LoopMajor, Minor: d.dev.Number,
		ReadOnly: d.dev.ReadOnly || slices.Contains(options, "ro"),
	}}, tgt, unix.MS_NOSUID|unix.MS_NODEV)
	return nil
}

// GrowFS grows the filesystem of the device mounted at mountPath to the device's size.
func (m mounts) GrowFS(dev, mountPath string) error {
	if hook := m.h.begin("GrowFS", dev, mountPath).GrowFS; hook != nil {
		if err := hook(dev, mountPath); err != nil {
			return err
		}
	}
	h := m.h
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.deviceAt(dev)
	e := h.at(abs(mountPath))
	if !ok || e == nil || e.info.Major != LoopMajor || e.info.Minor != d.dev.Number {
		return fmt.Errorf("grow the filesystem on %s: not mounted at %s", dev, mountPath)
	}
	fs := h.fs[fileID{d.dev.Dev, d.dev.Inode}]
	fs.Size = max(fs.Size, d.size)
	return nil
}

// GrowExt4Offline grows an unmounted ext4 filesystem to its device's size; a device
// without ext4 is left alone.
func (m mounts) GrowExt4Offline(dev string) error {
	if hook := m.h.begin("GrowExt4Offline", dev).GrowExt4Offline; hook != nil {
		if err := hook(dev); err != nil {
			return err
		}
	}
	h := m.h
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.deviceAt(dev)
	if !ok {
		return fmt.Errorf("grow %s: %w", dev, &os.PathError{Op: "open", Path: dev, Err: unix.ENXIO})
	}
	fs := h.fs[fileID{d.dev.Dev, d.dev.Inode}]
	if fs == nil || fs.Type != "ext4" {
		return nil
	}
	for _, e := range h.mounts {
		if e.info.Major == LoopMajor && e.info.Minor == d.dev.Number {
			return fmt.Errorf("e2fsck %s: mounted at %s", dev, e.info.Mountpoint)
		}
	}
	fs.Size = max(fs.Size, d.size)
	return nil
}

// Filesystem is what formatting wrote into the image file, if anything.
func (h *Host) Filesystem(backingFile string) (Filesystem, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	id, _, err := backing(backingFile)
	if fs := h.fs[id]; err == nil && fs != nil {
		return *fs, true
	}
	return Filesystem{}, false
}
