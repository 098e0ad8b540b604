package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

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

// mountPointsUnder lists the mount points at or below root from
// /proc/self/mountinfo, longest path first.
func mountPointsUnder(root string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var points []string
	for line := range strings.Lines(string(data)) {
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		p := unescapeMountinfo(fields[4])
		if p == root || strings.HasPrefix(p, root+"/") {
			points = append(points, p)
		}
	}
	// Deepest first: a longer path can only be below, never above, a shorter one.
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	return points, nil
}

// unescapeMountinfo undoes the octal escapes (\040 for space...) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
