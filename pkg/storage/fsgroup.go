package storage

import (
	"context"
	"errors"
	"fmt"

	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// The node advertises VOLUME_MOUNT_GROUP, so the kubelet (DelegateFSGroupToCSIDriver)
// sends a pod's fsGroup as volume_mount_group and no longer changes a volume's
// ownership itself: the driver decides per volume. Berth's own volumes get what the
// kubelet's SetVolumeOwnership gives them; an adopted host directory keeps its owners
// and modes, as a hostPath volume does.
const (
	fsGroupFileBits = 0o660                // kubelet's rwMask: owner and group read and write
	fsGroupDirBits  = 0o770 | unix.S_ISGID // and, on directories, search and setgid
)

// applyMountGroup gives the volume a publish mounts (its source directory) the group
// the pod asked for, before the bind mount. A block volume and a read-only publish
// are left alone (the kubelet skips those too); an adopted directory is never changed.
func (n *Node) applyMountGroup(ctx context.Context, req PublishRequest, src *publishSource, readOnly bool) error {
	g := req.Capability.MountGroup
	switch {
	case g == nil || src.Block || readOnly:
		return nil
	case IsAdopted(req.VolumeID):
		klog.FromContext(ctx).V(2).Info("Ignored fsGroup for an adopted host directory", "volumeID", req.VolumeID, "fsGroup", *g)
		return nil
	}
	changed, err := SetGroupOwnership(ctx, src.Path, *g)
	if err != nil {
		return fmt.Errorf("apply fsGroup %d to volume %s: %w", *g, req.VolumeID, err)
	}
	klog.FromContext(ctx).V(4).Info("Applied fsGroup", "volumeID", req.VolumeID, "fsGroup", *g, "entriesChanged", changed)
	return nil
}

// SetGroupOwnership does to the tree at dir what the kubelet's SetVolumeOwnership does
// for a pod's fsGroup: every entry gets group gid and group read-write (symlinks get
// the group only), directories also group search and setgid, so the pod's new files
// inherit the group. When dir already has group gid, rwx for owner and group and
// setgid, nothing is walked (the kubelet's fsGroupChangePolicy OnRootMismatch, which
// Berth always applies since the policy is not passed to drivers); the root is changed
// last, so a walk cut short is walked again. The walk never follows a symlink nor
// crosses a mount point (safefs), so nothing a pod plants in its volume makes it touch
// another file; entries that vanish meanwhile are skipped. It returns the number of
// entries changed.
func SetGroupOwnership(ctx context.Context, dir string, gid uint32) (int, error) {
	root, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(root)
	var st unix.Stat_t
	if err := unix.Fstat(root, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", dir, err)
	}
	if st.Gid == gid && st.Mode&fsGroupDirBits == fsGroupDirBits {
		return 0, nil
	}
	w := safefs.NewWalker(root, dir)
	defer w.Close()
	if err := w.Push("."); err != nil {
		return 0, fmt.Errorf("open %s: %w", dir, err)
	}
	changed := 0
	level := func() error { // the directory just pushed, below the root
		fd, err := w.Fd()
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return fmt.Errorf("stat %s: %w", w.Path(), err)
		}
		did, err := regroup(fd, "", &st, gid)
		if did {
			changed++
		}
		if err != nil {
			return fmt.Errorf("%s: %w", w.Path(), err)
		}
		return nil
	}
	for w.Depth() > 0 {
		if err := ctx.Err(); err != nil {
			return changed, err
		}
		name, _, ok, err := w.Next()
		if err != nil {
			return changed, err
		}
		if !ok {
			w.Pop()
			continue
		}
		did, isDir, err := regroupEntry(w, name, gid)
		if did {
			changed++
		}
		if err != nil {
			return changed, fmt.Errorf("%s: %w", w.Path(name), err)
		}
		if !isDir {
			continue
		}
		switch err := w.Push(name); {
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
			continue // gone, or swapped for something else, meanwhile
		case err != nil:
			return changed, fmt.Errorf("%s: %w", w.Path(name), err)
		}
		if err := level(); err != nil {
			return changed, err
		}
	}
	// The root last: it says the walk is done, so a walk cut short (the call's
	// deadline, a crash) is done again by the next publish, not skipped.
	did, err := regroup(root, "", &st, gid)
	if did {
		changed++
	}
	if err != nil {
		return changed, fmt.Errorf("%s: %w", dir, err)
	}
	return changed, nil
}

// regroupEntry regroups a non-directory entry of the walker's current level through an
// O_PATH handle opened without following a symlink or crossing a mount; a directory is
// only reported (isDir), to be pushed and regrouped as a level. An entry that vanished
// or is a mount point is skipped.
func regroupEntry(w *safefs.Walker, name string, gid uint32) (did, isDir bool, err error) {
	dirfd, err := w.Fd()
	if err != nil {
		return false, false, err
	}
	fd, err := safefs.OpenConfined(dirfd, name, unix.O_PATH)
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EXDEV):
		return false, false, nil
	case err != nil:
		return false, false, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, false, err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return false, true, nil
	}
	did, err = regroup(fd, safefs.ProcPath(fd), &st, gid)
	return did, false, err
}

// regroup gives one entry, open as fd, group gid and the group bits, writing only what
// differs. A directory's fd is a real one (fchmod); another entry's is O_PATH, whose
// mode is changed through its /proc/self/fd path (procPath), which names exactly
// that inode. A symlink gets the group only. A file that is changed loses setuid
// and setgid (chown clears them anyway; every publish is nosuid).
func regroup(fd int, procPath string, st *unix.Stat_t, gid uint32) (bool, error) {
	typ := st.Mode & unix.S_IFMT
	bits := uint32(fsGroupFileBits)
	if typ == unix.S_IFDIR {
		bits = fsGroupDirBits
	}
	did := false
	if st.Gid != gid {
		if err := unix.Fchownat(fd, "", -1, int(gid), unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return false, fmt.Errorf("chown: %w", err)
		}
		did = true
	}
	if typ == unix.S_IFLNK {
		return did, nil
	}
	cur := st.Mode & 0o7777
	mode := cur | bits
	if typ != unix.S_IFDIR {
		mode &^= unix.S_ISUID | unix.S_ISGID
	}
	if !did && cur&bits == bits {
		return false, nil
	}
	var err error
	if procPath == "" {
		err = unix.Fchmod(fd, mode)
	} else {
		err = unix.Chmod(procPath, mode)
	}
	if err != nil {
		return did, fmt.Errorf("chmod: %w", err)
	}
	return true, nil
}
