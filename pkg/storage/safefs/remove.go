package safefs

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// maxRescans bounds how often one directory is read again because entries
// appeared in it while it was being emptied.
const maxRescans = 16

// maxRaces bounds how often one entry may change type under the walk (a
// directory replaced by a file or the reverse) before the walk gives up.
const maxRaces = 8

// RemoveTree removes the entry name of directory parent and, if it is a
// directory, everything beneath it. It is idempotent: a missing name is not an
// error.
//
// name must be a single path component. No symlink is ever followed: symlinks
// are unlinked as links, and fifos, sockets and device nodes are unlinked
// without being opened. Every directory is opened with openat2 relative to the
// one above it, confined by RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS and
// RESOLVE_NO_XDEV, so nothing planted inside the tree can lead the walk
// outside it. A mount point inside the tree is not descended into: RemoveTree
// stops and returns an error naming it that wraps unix.EBUSY, leaving that
// subtree (and whatever was not yet removed) in place. Any other failure also
// stops the walk. The number of fds held is bounded whatever the depth, and
// the time is linear in the number of entries. parent itself is trusted and
// resolved normally.
func RemoveTree(parent, name string) error {
	return RemoveTreeContext(context.Background(), parent, name)
}

// RemoveTreeContext is RemoveTree stopped with ctx's error, within a few
// thousand entries, once ctx ends. What was removed stays removed; calling it
// again finishes the job.
func RemoveTreeContext(ctx context.Context, parent, name string) error {
	if err := validName(name); err != nil {
		return fmt.Errorf("remove %q in %s: %w", name, parent, err)
	}
	pfd, err := unix.Open(parent, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("remove %s: open parent: %w", filepath.Join(parent, name), err)
	}
	defer unix.Close(pfd)
	return RemoveTreeAt(ctx, pfd, parent, name)
}

// RemoveTreeAt is RemoveTreeContext with the parent given as a directory fd (an
// O_PATH fd will do), which stays the caller's; parentName names it in errors.
func RemoveTreeAt(ctx context.Context, parentFd int, parentName, name string) error {
	if err := validName(name); err != nil {
		return fmt.Errorf("remove %q in %s: %w", name, parentName, err)
	}
	s := newDirStack(parentFd, parentName).withContext(ctx)
	defer s.close()
	return removeTree(s, name)
}

// ValidName reports whether name is a single, non-special path component: not
// empty, "." or "..", without "/" or NUL (unix.EINVAL otherwise).
func ValidName(name string) error { return validName(name) }

// validName accepts a single, non-special path component.
func validName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') ||
		strings.ContainsRune(name, 0) {
		return unix.EINVAL
	}
	return nil
}

// removeTree removes name, an entry of the anchor of the empty stack s.
func removeTree(s *dirStack, name string) error {
	pushed, err := removeEntry(s, name, unix.DT_UNKNOWN)
	if err != nil || !pushed {
		return err
	}
	rescans := make([]int, 0, 64) // per level, parallel to s.frames
	rescans = append(rescans, 0)
	for s.depth() > 0 {
		entry, typ, ok, err := s.next()
		if err != nil {
			return err
		}
		if ok {
			pushed, err := removeEntry(s, entry, typ)
			if err != nil {
				return err
			}
			if pushed {
				rescans = append(rescans, 0)
			}
			continue
		}
		// The top level has been read to its end: remove it from its parent.
		d := s.depth() - 1
		if err := s.ensureOpen(d - 1); err != nil {
			return err
		}
		err = unix.Unlinkat(s.dirFd(d-1), s.top().name, unix.AT_REMOVEDIR)
		switch {
		case err == nil || err == unix.ENOENT:
			s.pop()
			rescans = rescans[:d]
		case err == unix.ENOTEMPTY || err == unix.EEXIST:
			// Entries appeared behind the read position: read it again.
			rescans[d]++
			if rescans[d] > maxRescans {
				return fmt.Errorf("remove %s: still not empty after %d rescans: %w", s.path(d), maxRescans, err)
			}
			if err := s.rewind(); err != nil {
				return err
			}
		case err == unix.EBUSY:
			return fmt.Errorf("remove %s: mount point inside tree: %w", s.path(d), err)
		default:
			return fmt.Errorf("remove %s: %w", s.path(d), err)
		}
	}
	return nil
}

// removeEntry removes entry name of the top level of s (or of the anchor when
// s is empty) if it is not a directory, or pushes it onto s if it is, so the
// walk empties it next. typ is the getdents type hint; the syscalls decide.
func removeEntry(s *dirStack, name string, typ uint8) (pushed bool, err error) {
	dirfd := s.dirFd(s.depth() - 1)
	isDir := typ == unix.DT_DIR
	for range maxRaces {
		if !isDir {
			err := unix.Unlinkat(dirfd, name, 0)
			switch err {
			case nil, unix.ENOENT:
				return false, nil
			case unix.EISDIR:
				isDir = true
				continue
			case unix.EBUSY:
				return false, fmt.Errorf("remove %s: mount point inside tree: %w", s.path(s.depth()-1, name), err)
			default:
				return false, fmt.Errorf("remove %s: %w", s.path(s.depth()-1, name), err)
			}
		}
		err := s.push(name)
		switch err {
		case nil:
			return true, nil
		case unix.ENOENT:
			return false, nil
		case unix.ENOTDIR, unix.ELOOP:
			// Not a directory (any more), or a symlink: unlink it.
			isDir = false
			continue
		case unix.EXDEV:
			return false, fmt.Errorf("remove %s: mount point inside tree: %w", s.path(s.depth()-1, name), unix.EBUSY)
		default:
			return false, fmt.Errorf("remove %s: open directory: %w", s.path(s.depth()-1, name), err)
		}
	}
	return false, fmt.Errorf("remove %s: entry keeps changing type: %w", s.path(s.depth()-1, name), unix.EAGAIN)
}
