package safefs

import (
	"strings"

	"golang.org/x/sys/unix"
)

// Walker is a depth-first cursor over a directory tree for callers that do
// their own work per entry (copying, for example). It is the directory stack
// RemoveTree and Usage walk with: every directory is opened with openat2
// relative to the one above it, confined by RESOLVE_BENEATH,
// RESOLVE_NO_SYMLINKS, RESOLVE_NO_MAGICLINKS and RESOLVE_NO_XDEV, so a symlink
// or a mount point inside the tree is never entered, and at most a fixed
// number of directory fds is held whatever the depth. A level whose fd was
// given back is reopened when the walk climbs back to it, through ".." of the
// level below (one lookup, so a walk is linear in its entries whatever the
// depth), and refused (an error wrapping unix.ESTALE) unless it is still the
// same inode: a directory moved to another parent during the walk stops it
// when the walk climbs above it.
//
// A Walker is not safe for concurrent use.
type Walker struct{ s *dirStack }

// NewWalker starts a walk at the directory fd anchor, which may be an O_PATH
// fd. The anchor is borrowed: the caller keeps it open until Close and closes
// it afterwards. anchorDir names it in error messages only.
func NewWalker(anchor int, anchorDir string) *Walker {
	return &Walker{s: newDirStack(anchor, anchorDir)}
}

// Depth is the number of levels pushed: 0 before the first Push.
func (w *Walker) Depth() int { return w.s.depth() }

// Push opens the directory name, an entry of the current level (of the
// anchor at depth 0), for reading and makes it the current level. name is
// normally one component; "." pushes the anchor itself. On failure the walker
// is unchanged and the raw errno is returned: ENOENT when the entry vanished,
// ENOTDIR when it is not a directory (a symlink included, since the open
// asks for O_DIRECTORY|O_NOFOLLOW), EXDEV when it is a mount point or would
// leave the anchor.
func (w *Walker) Push(name string) error {
	if err := w.s.ensureOpen(w.s.depth() - 1); err != nil {
		return err
	}
	return w.s.push(name)
}

// Pop closes and leaves the current level.
func (w *Walker) Pop() { w.s.pop() }

// Next returns the next entry of the current level other than "." and "..",
// with its d_type, which is a hint only: the type must be decided from an fd
// or an *at call. ok is false once the level has been read to its end.
func (w *Walker) Next() (name string, typ uint8, ok bool, err error) {
	return w.s.next()
}

// Fd returns an fd on the current level (the anchor at depth 0), reopening
// the level first if its fd was given back. The fd belongs to the walker and
// stays valid until the next Push, Pop, Next or Close.
func (w *Walker) Fd() (int, error) {
	d := w.s.depth() - 1
	if err := w.s.ensureOpen(d); err != nil {
		return -1, err
	}
	return w.s.dirFd(d), nil
}

// Path names the current level (or, with extra, an entry inside it) for
// error messages; it is never opened.
func (w *Walker) Path(extra ...string) string {
	return w.s.path(w.s.depth()-1, extra...)
}

// Close releases every fd the walker holds, except the anchor.
func (w *Walker) Close() { w.s.close() }

// OpenConfined opens name beneath the directory dirfd with openat2, confined
// like a Walker's lookups (RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS,
// RESOLVE_NO_MAGICLINKS, RESOLVE_NO_XDEV); O_NOFOLLOW and O_CLOEXEC are added
// to flags. Retries on EAGAIN and EINTR are bounded; other errors are the
// raw errno. With O_PATH, a trailing symlink yields an fd on the link itself
// rather than ELOOP (openat2 semantics): the caller must fstat the result.
// A file created through O_CREAT gets mode 0600.
func OpenConfined(dirfd int, name string, flags int) (int, error) {
	how := unix.OpenHow{
		Flags:   uint64(flags | unix.O_NOFOLLOW | unix.O_CLOEXEC),
		Resolve: resolveFlags,
	}
	if flags&unix.O_CREAT != 0 || flags&unix.O_TMPFILE == unix.O_TMPFILE {
		how.Mode = 0o600
	}
	fd, err := -1, error(nil)
	for range maxOpenRetries {
		fd, err = unix.Openat2(dirfd, name, &how)
		if err != unix.EINTR && err != unix.EAGAIN {
			break
		}
	}
	return fd, err
}

// OpenDirChain opens the directory reached from dirfd through names, one
// component each, confined like OpenConfined. The lookup goes a bounded
// chunk of components at a time, so the path may be longer than PATH_MAX.
// flags are the open flags of the result (O_PATH or O_RDONLY); O_DIRECTORY is
// added. With no names, dirfd itself is reopened. The raw errno is returned.
func OpenDirChain(dirfd int, names []string, flags int) (int, error) {
	if len(names) == 0 {
		return openDir(dirfd, ".", flags)
	}
	via := dirfd
	for k := 0; k < len(names); {
		var b strings.Builder
		for k < len(names) && (b.Len() == 0 || b.Len()+1+len(names[k]) <= maxChunk) {
			if b.Len() > 0 {
				b.WriteByte('/')
			}
			b.WriteString(names[k])
			k++
		}
		f := unix.O_PATH
		if k == len(names) {
			f = flags
		}
		fd, err := openDir(via, b.String(), f)
		if via != dirfd {
			unix.Close(via)
		}
		if err != nil {
			return -1, err
		}
		via = fd
	}
	return via, nil
}
