package mounter

import (
	"fmt"

	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
)

// FormatAndMount mounts the block device dev at target with fsType, formatting it
// first only when it holds no filesystem at all (mount-utils' SafeFormatAndMount
// reads the device with blkid and never formats a device that has data). The mount is
// always nosuid and nodev. It runs mkfs, fsck and mount as child processes: staging is
// rare, and these tools are the reference for their filesystems.
func FormatAndMount(dev, target, fsType string, options []string) error {
	m := &mount.SafeFormatAndMount{Interface: mount.New(""), Exec: utilexec.New()}
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
func GrowFS(dev, mountPath string) error {
	r := mount.NewResizeFs(utilexec.New())
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
func GrowExt4Offline(dev string) error {
	e := utilexec.New()
	if out, err := e.Command("blkid", "-p", "-s", "TYPE", "-o", "value", dev).CombinedOutput(); err != nil || string(out) != "ext4\n" {
		return nil // no ext4 here (yet): formatting will size it
	}
	r := mount.NewResizeFs(e)
	need, err := r.NeedResize(dev, "")
	if err != nil || !need {
		return err
	}
	if out, err := e.Command("e2fsck", "-f", "-p", dev).CombinedOutput(); err != nil {
		return fmt.Errorf("e2fsck %s before growing it: %w: %s", dev, err, out)
	}
	if out, err := e.Command("resize2fs", dev).CombinedOutput(); err != nil {
		return fmt.Errorf("resize2fs %s: %w: %s", dev, err, out)
	}
	return nil
}
