package safefs

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"
)

// linkShare accumulates the entries that share one link count: a file with n
// names is met n times in a tree that holds all of them, and each meeting
// credits 1/n of it. Summing per n and dividing at the end keeps the result
// exact without remembering a single inode.
type linkShare struct{ blocks, names int64 }

// Usage returns the space allocated to the tree rooted at dir (the sum of
// st_blocks*512, so a sparse file counts only its allocated blocks) and the
// number of inodes in it, the root directory included.
//
// The walk never follows a symlink (symlinks count as themselves) and never
// crosses into another filesystem: an entry whose st_dev differs from the
// root's is skipped with everything beneath it, and so is a mount point of the
// same filesystem. dir itself must not be a symlink. Entries that vanish
// during the walk are skipped. The number of fds held is bounded whatever the
// depth, the time is linear in the number of entries, and the memory does not
// grow with them.
//
// A regular file (or any non-directory) with n hard links is credited 1/n of
// its blocks and of an inode at each of its names, so it counts once when all
// its names are in the tree, and only for the share of its names inside the
// tree otherwise (a file linked from outside the tree is shared with the
// outside). No map of inodes is kept.
//
// Cancelling ctx stops the walk with ctx's error, within a few thousand
// entries.
func Usage(ctx context.Context, dir string) (bytes int64, inodes int64, err error) {
	anchor, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("usage of %s: %w", dir, err)
	}
	defer unix.Close(anchor)
	s := newDirStack(anchor, dir).withContext(ctx)
	defer s.close()
	bytes, inodes, err = usage(s)
	if err != nil {
		return 0, 0, fmt.Errorf("usage of %s: %w", dir, err)
	}
	return bytes, inodes, nil
}

// usage measures the anchor of the empty stack s.
func usage(s *dirStack) (bytes int64, inodes int64, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(s.anchor, &st); err != nil {
		return 0, 0, fmt.Errorf("stat: %w", err)
	}
	rootDev := st.Dev
	bytes, inodes = st.Blocks*512, 1
	if err := s.push("."); err != nil {
		return 0, 0, fmt.Errorf("open: %w", err)
	}
	shares := make(map[uint64]*linkShare)
	for s.depth() > 0 {
		name, _, ok, err := s.next()
		if err != nil {
			return 0, 0, err
		}
		if !ok {
			s.pop()
			continue
		}
		err = unix.Fstatat(s.top().fd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if err == unix.ENOENT {
			continue
		}
		if err != nil {
			return 0, 0, fmt.Errorf("stat %s: %w", s.path(s.depth()-1, name), err)
		}
		if st.Dev != rootDev {
			continue
		}
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		if isDir {
			switch err := s.push(name); err {
			case nil:
			case unix.ENOENT, unix.ENOTDIR, unix.ELOOP, unix.EXDEV:
				// Vanished, replaced, or a mount point: not part of this tree.
				continue
			default:
				return 0, 0, fmt.Errorf("open %s: %w", s.path(s.depth()-1, name), err)
			}
		}
		if !isDir && st.Nlink > 1 {
			sh := shares[uint64(st.Nlink)]
			if sh == nil {
				sh = &linkShare{}
				shares[uint64(st.Nlink)] = sh
			}
			sh.blocks += st.Blocks
			sh.names++
			continue
		}
		bytes += st.Blocks * 512
		inodes++
	}
	for n, sh := range shares {
		bytes += sh.blocks / int64(n) * 512
		inodes += sh.names / int64(n)
	}
	return bytes, inodes, nil
}
