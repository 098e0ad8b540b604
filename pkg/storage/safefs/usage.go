package safefs

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// inodeKey identifies an inode across the walk, to count hard links once.
type inodeKey struct{ dev, ino uint64 }

// Usage returns the space allocated to the tree rooted at dir (the sum of
// st_blocks*512, so a sparse file counts only its allocated blocks) and the
// number of inodes in it, the root directory included.
//
// The walk never follows a symlink (symlinks count as themselves), counts an
// inode with several hard links once, and never crosses into another
// filesystem: an entry whose st_dev differs from the root's is skipped with
// everything beneath it, and so is a mount point of the same filesystem.
// dir itself must not be a symlink. Entries that vanish during the walk are
// skipped. The number of fds held is bounded whatever the depth.
func Usage(dir string) (bytes int64, inodes int64, err error) {
	anchor, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("usage of %s: %w", dir, err)
	}
	defer unix.Close(anchor)
	var st unix.Stat_t
	if err := unix.Fstat(anchor, &st); err != nil {
		return 0, 0, fmt.Errorf("usage of %s: stat: %w", dir, err)
	}
	rootDev := st.Dev
	bytes, inodes = st.Blocks*512, 1

	s := newDirStack(anchor, dir)
	defer s.close()
	if err := s.push("."); err != nil {
		return 0, 0, fmt.Errorf("usage of %s: open: %w", dir, err)
	}
	seen := make(map[inodeKey]struct{})
	for s.depth() > 0 {
		name, _, ok, err := s.next()
		if err != nil {
			return 0, 0, fmt.Errorf("usage of %s: %w", dir, err)
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
			return 0, 0, fmt.Errorf("usage of %s: stat %s: %w", dir, s.path(s.depth()-1, name), err)
		}
		if st.Dev != rootDev {
			continue
		}
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		if !isDir && st.Nlink > 1 {
			key := inodeKey{st.Dev, st.Ino}
			if _, dup := seen[key]; dup {
				continue
			}
			seen[key] = struct{}{}
		}
		if isDir {
			switch err := s.push(name); err {
			case nil:
			case unix.ENOENT, unix.ENOTDIR, unix.ELOOP, unix.EXDEV:
				// Vanished, replaced, or a mount point: not part of this tree.
				continue
			default:
				return 0, 0, fmt.Errorf("usage of %s: open %s: %w", dir, s.path(s.depth()-1, name), err)
			}
		}
		bytes += st.Blocks * 512
		inodes++
	}
	return bytes, inodes, nil
}
