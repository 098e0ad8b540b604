package mounter

import (
	"fmt"

	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
)

// Tools formats, checks and grows filesystems with the filesystems' own programs
// (mkfs, fsck, blkid, resize2fs, xfs_growfs), run through Exec: staging is rare, and
// these tools are the reference for their filesystems. It is the one part of this
// package that starts child processes.
type Tools struct {
	Exec utilexec.Interface
}

// NewTools runs the programs with os/exec.
func NewTools() Tools { return Tools{Exec: utilexec.New()} }

// FormatAndMount mounts the block device dev at target with fsType, formatting it
// first only when it holds no filesystem at all (mount-utils' SafeFormatAndMount
// reads the device with blkid and never formats a device that has data). The mount is
// always nosuid and nodev.
func (t Tools) FormatAndMount(dev, target, fsType string, options []string) error {
	m := &mount.SafeFormatAndMount{Interface: mount.New(""), Exec: t.Exec}
	opts := append([]string{"nosuid", "nodev"}, options...)
	if fsType == "xfs" {
		// A restored or cloned image carries its source's XFS UUID, and XFS refuses
		// a second mount of one UUID: the source is usually mounted on this node.
		opts = append(opts, "nouuid")
	}
	if err := m.FormatAndMount(dev, target, fsType, opts); err != nil {
		return fmt.Errorf("format and mount %s (%s) at %s: %w", dev, fsType, target, err)
	}
	return nil
}

// GrowFS grows the filesystem on dev, mounted at mountPath, to fill the device when
// it is smaller (resize2fs for ext*, xfs_growfs for xfs). It is idempotent.
func (t Tools) GrowFS(dev, mountPath string) error {
	r := mount.NewResizeFs(t.Exec)
	need, err := r.NeedResize(dev, mountPath)
	if err != nil {
		return fmt.Errorf("check size of the filesystem on %s: %w", dev, err)
	}
	if !need {
		return nil
	}
	if _, err := r.Resize(dev, mountPath); err != nil {
		return fmt.Errorf("grow the filesystem on %s: %w", dev, err)
	}
	return nil
}

// GrowExt4Offline grows the unmounted ext4 filesystem on dev to fill the device, when
// it is smaller (after a restore into a larger volume). Offline growth needs no
// CAP_SYS_RESOURCE, unlike growing a mounted ext4. resize2fs demands a fresh check
// first, so e2fsck -f -p runs before it. A device without a filesystem is left alone.
func (t Tools) GrowExt4Offline(dev string) error {
	if out, err := t.Exec.Command("blkid", "-p", "-s", "TYPE", "-o", "value", dev).CombinedOutput(); err != nil || string(out) != "ext4\n" {
		return nil // no ext4 here (yet): formatting will size it
	}
	r := mount.NewResizeFs(t.Exec)
	need, err := r.NeedResize(dev, "")
	if err != nil || !need {
		return err
	}
	if out, err := t.Exec.Command("e2fsck", "-f", "-p", dev).CombinedOutput(); err != nil {
		return fmt.Errorf("e2fsck %s before growing it: %w: %s", dev, err, out)
	}
	if out, err := t.Exec.Command("resize2fs", dev).CombinedOutput(); err != nil {
		return fmt.Errorf("resize2fs %s: %w: %s", dev, err, out)
	}
	return nil
}
