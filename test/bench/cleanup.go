package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/berth-csi/berth/pkg/mounter"
	"golang.org/x/sys/unix"
)

// removeTree detaches every mount below root, then removes root. It refuses
// to remove anything while a mount remains, since removal would reach into
// the mounted directory.
func removeTree(root string) error {
	if err := unmountUnder(root); err != nil {
		return fmt.Errorf("not removing %s: %w", root, err)
	}
	return os.RemoveAll(root)
}

// unmountUnder detaches every mount at or below root, deepest first, so that
// removing root cannot reach into a mounted volume. It reports mounts it
// could not detach.
func unmountUnder(root string) error {
	root = filepath.Clean(root)
	var errs []error
	// A mount may be stacked several times on one target: repeat until clean.
	for range 16 {
		points, err := mountPointsUnder(root)
		if err != nil {
			return err
		}
		if len(points) == 0 {
			return nil
		}
		errs = errs[:0]
		for _, p := range points {
			if err := unix.Unmount(p, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
			}
		}
	}
	if len(errs) == 0 {
		errs = append(errs, fmt.Errorf("mounts remain under %s", root))
	}
	return errors.Join(errs...)
}

// mountPointsUnder lists the mount points at or below root, longest path first.
func mountPointsUnder(root string) ([]string, error) {
	mounts, err := mounter.All()
	if err != nil {
		return nil, err
	}
	var points []string
	for _, m := range mounts {
		if m.Mountpoint == root || strings.HasPrefix(m.Mountpoint, root+"/") {
			points = append(points, m.Mountpoint)
		}
	}
	// Deepest first: a longer path can only be below, never above, a shorter one.
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	return points, nil
}
