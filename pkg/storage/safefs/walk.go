package safefs

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"path/filepath"

	"golang.org/x/sys/unix"
)

const (
	// maxOpenDirs bounds the directory fds a walk holds at once, however deep
	// the tree: deeper levels push the shallowest ones out of the window.
	maxOpenDirs = 32
	// maxChunk bounds one multi-component path handed to openat2 by
	// OpenDirChain; it stays well under PATH_MAX.
	maxChunk = 3072
	// direntBufSize is the getdents buffer held by each open level.
	direntBufSize = 8 << 10
	// direntHeader is the fixed part of a linux_dirent64: ino, off, reclen, type.
	direntHeader = 19
	// ctxEvery is how many entries a walk reads between two looks at its
	// context.
	ctxEvery = 4096
)

// resolveFlags confine every lookup of a walk: no step may leave the
// directory it starts from, follow a symlink of any kind, or cross a mount.
const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS |
	unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// climbFlags resolve the ".." of a climb back to a level whose fd was pushed
// out. RESOLVE_BENEATH would refuse ".." at the start of the lookup; what
// keeps the climb inside the tree is the identity check that follows it.
const climbFlags = unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// errChanged reports that a directory reopened by a climb is no longer the
// one the walk left (it was moved to another parent); it wraps ESTALE so
// callers may treat it as retryable.
var errChanged = fmt.Errorf("directory replaced during walk: %w", unix.ESTALE)

// frame is one directory level of a walk. A walk keeps one per level of its
// path, however deep: it is kept small, the reading state of open levels
// lives in a cursor.
type frame struct {
	name string  // component relative to the level above (or the anchor)
	off  int64   // directory offset just past the last consumed entry
	ino  uint64  // identity recorded when the fd is pushed out (dirStack.dev)
	fd   int     // -1 while pushed out of the window
	cur  *cursor // nil while pushed out of the window
}

// cursor is the getdents state of an open level.
type cursor struct {
	buf []byte
	pos int
	end int
	eof bool
}

// dirStack is the path from an anchor directory down to the level a walk is
// reading. The anchor fd stays open for the whole walk; of the levels, at most
// maxOpenDirs keep an fd, always the deepest ones. A level that lost its fd is
// reopened when the walk climbs back to it, through ".." of the level below
// it (one lookup, so a walk costs a number of lookups linear in its entries
// whatever the depth), and must be the inode recorded when its fd was
// closed, else the walk stops with errChanged. Descending always opens by
// name with resolveFlags.
//
// Why the climb cannot leave the anchor: every level was reached beneath the
// anchor, and each one reopened is the very inode the walk left. A level
// moved to another parent is refused as soon as the walk climbs above it (its
// ".." is no longer the recorded inode). The walk may go on reading a moved
// level's content before that; it stays on the anchor's filesystem
// (RESOLVE_NO_XDEV), and within what whoever moved it could already write, since
// nobody can rename a directory to a place they cannot write. The anchor
// itself is never climbed to: its fd is held.
type dirStack struct {
	anchor    int
	anchorDir string // for error messages only
	frames    []frame
	firstOpen int // index of the shallowest level holding an fd
	// up is the fd of the level popped last while the new top had no fd,
	// kept to climb from; -1 otherwise.
	up  int
	err error // a failed climb during pop, returned by the next ensureOpen
	ctx context.Context
	// reads counts entries returned by next, to look at ctx now and then.
	reads int
	// lookups counts the path components resolved to reopen levels; the
	// tests check that it stays linear in the depth.
	lookups int
	// free are cursors given back by levels that lost their fd, for the
	// next level that opens: a walk allocates about maxOpenDirs of them (and
	// their getdents buffers), not two per level.
	free []*cursor
	// dev is the filesystem of every level (none crosses a mount), recorded
	// with the first identity.
	dev    uint64
	devSet bool
}

func (s *dirStack) getCursor() *cursor {
	if n := len(s.free); n > 0 {
		c := s.free[n-1]
		s.free = s.free[:n-1]
		*c = cursor{buf: c.buf}
		return c
	}
	return &cursor{buf: make([]byte, direntBufSize)}
}

func (s *dirStack) putCursor(c *cursor) {
	if c != nil {
		s.free = append(s.free, c)
	}
}

func newDirStack(anchor int, anchorDir string) *dirStack {
	return &dirStack{anchor: anchor, anchorDir: anchorDir, up: -1}
}

// withContext makes next stop with ctx's error, checked every ctxEvery
// entries, once ctx ends.
func (s *dirStack) withContext(ctx context.Context) *dirStack {
	s.ctx = ctx
	return s
}

// depth is the number of levels on the stack.
func (s *dirStack) depth() int { return len(s.frames) }

// top is the level being read. The caller guarantees the stack is not empty.
func (s *dirStack) top() *frame { return &s.frames[len(s.frames)-1] }

// path names level i (or, with extra, an entry inside it) for error messages.
func (s *dirStack) path(i int, extra ...string) string {
	parts := make([]string, 0, i+2+len(extra))
	parts = append(parts, s.anchorDir)
	for k := 0; k <= i && k < len(s.frames); k++ {
		parts = append(parts, s.frames[k].name)
	}
	return filepath.Join(append(parts, extra...)...)
}

// dirFd is the fd of level i, or the anchor for i == -1. The caller must have
// made sure the level is open.
func (s *dirStack) dirFd(i int) int {
	if i < 0 {
		return s.anchor
	}
	return s.frames[i].fd
}

// openDir opens the directory name beneath dirfd for reading, confined by
// resolveFlags. The raw errno is returned so callers can tell a vanished
// entry (ENOENT), a non-directory or symlink (ENOTDIR, ELOOP) and a mount
// point (EXDEV) apart.
func openDir(dirfd int, name string, flags int) (int, error) {
	how := unix.OpenHow{
		Flags:   uint64(flags | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC),
		Resolve: resolveFlags,
	}
	var fd int
	var err error
	for range maxOpenRetries {
		fd, err = unix.Openat2(dirfd, name, &how)
		if err != unix.EINTR && err != unix.EAGAIN {
			break
		}
	}
	return fd, err
}

// push opens the entry name of the top level (or of the anchor when the stack
// is empty) and makes it the new top. On failure the stack is unchanged and
// the raw errno is returned.
func (s *dirStack) push(name string) error {
	fd, err := openDir(s.dirFd(len(s.frames)-1), name, unix.O_RDONLY)
	if err != nil {
		return err
	}
	s.frames = append(s.frames, frame{name: name, fd: fd, cur: s.getCursor()})
	if len(s.frames)-s.firstOpen > maxOpenDirs {
		if err := s.evict(); err != nil {
			s.pop()
			return err
		}
	}
	return nil
}

// evict closes the shallowest open level, recording its identity.
func (s *dirStack) evict() error {
	f := &s.frames[s.firstOpen]
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", s.path(s.firstOpen), err)
	}
	if !s.devSet {
		s.dev, s.devSet = st.Dev, true
	} else if st.Dev != s.dev {
		return fmt.Errorf("stat %s: %w", s.path(s.firstOpen), errChanged)
	}
	f.ino = st.Ino
	unix.Close(f.fd)
	s.putCursor(f.cur)
	f.fd, f.cur = -1, nil
	s.firstOpen++
	return nil
}

// pop closes and drops the top level. When the new top has no fd, the popped
// level's fd is kept to climb from.
func (s *dirStack) pop() {
	if s.top().fd < 0 {
		// Popping a level that was never reopened: climb to it first, so
		// the chain of fds to climb from is not lost.
		if err := s.ensureOpen(len(s.frames) - 1); err != nil && s.err == nil {
			s.err = err
		}
	}
	f := s.top()
	fd := f.fd
	s.putCursor(f.cur)
	s.frames[len(s.frames)-1] = frame{}
	s.frames = s.frames[:len(s.frames)-1]
	if s.firstOpen > len(s.frames) {
		s.firstOpen = len(s.frames)
	}
	if s.up >= 0 {
		unix.Close(s.up)
		s.up = -1
	}
	if fd >= 0 && len(s.frames) > 0 && s.firstOpen == len(s.frames) {
		s.up = fd
	} else if fd >= 0 {
		unix.Close(fd)
	}
}

// close releases every fd the stack holds except the anchor.
func (s *dirStack) close() {
	for _, f := range s.frames {
		if f.fd >= 0 {
			unix.Close(f.fd)
		}
	}
	if s.up >= 0 {
		unix.Close(s.up)
	}
	s.frames, s.firstOpen, s.up, s.free = nil, 0, -1, nil
}

// ensureOpen makes level i hold an fd again, together with every level
// between it and the shallowest open one, by climbing through "..": one
// lookup per level, each level checked to be the inode it was when its fd was
// closed. On error the walk must stop; close still releases whatever was
// reopened.
func (s *dirStack) ensureOpen(i int) error {
	if s.err != nil {
		return s.err
	}
	for i >= 0 && i < s.firstOpen {
		k := s.firstOpen - 1
		child := s.up
		if s.firstOpen < len(s.frames) {
			child = s.frames[s.firstOpen].fd
		}
		if child < 0 {
			return fmt.Errorf("reopen %s: no level below it is open: %w", s.path(k), errChanged)
		}
		if err := s.climb(k, child); err != nil {
			s.err = err
			return err
		}
		s.firstOpen = k
		if s.up >= 0 {
			unix.Close(s.up)
			s.up = -1
		}
	}
	return nil
}

// climb reopens level k, whose fd was pushed out, as the parent of child (an
// fd on level k+1) and resumes reading it where the walk left it.
func (s *dirStack) climb(k, child int) error {
	f := &s.frames[k]
	how := unix.OpenHow{
		Flags:   uint64(unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC),
		Resolve: climbFlags,
	}
	var fd int
	var err error
	for range maxOpenRetries {
		fd, err = unix.Openat2(child, "..", &how)
		if err != unix.EINTR && err != unix.EAGAIN {
			break
		}
	}
	s.lookups++
	if err != nil {
		return fmt.Errorf("reopen %s: %w", s.path(k), err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return fmt.Errorf("stat %s: %w", s.path(k), err)
	}
	if st.Dev != s.dev || st.Ino != f.ino {
		unix.Close(fd)
		return fmt.Errorf("reopen %s: %w", s.path(k), errChanged)
	}
	if _, err := unix.Seek(fd, f.off, io.SeekStart); err != nil {
		unix.Close(fd)
		return fmt.Errorf("seek %s: %w", s.path(k), err)
	}
	f.fd, f.cur = fd, s.getCursor()
	return nil
}

// rewind restarts reading the top level from its first entry.
func (s *dirStack) rewind() error {
	f := s.top()
	if _, err := unix.Seek(f.fd, 0, io.SeekStart); err != nil {
		return fmt.Errorf("seek %s: %w", s.path(len(s.frames)-1), err)
	}
	f.off = 0
	*f.cur = cursor{buf: f.cur.buf}
	return nil
}

// next returns the next entry of the top level other than "." and "..", with
// its d_type (a hint only: callers must not trust it for safety). ok is false
// once the directory is exhausted. The entry counts as consumed: an fd reopen
// resumes after it.
func (s *dirStack) next() (name string, typ uint8, ok bool, err error) {
	if err := s.ensureOpen(len(s.frames) - 1); err != nil {
		return "", 0, false, err
	}
	if s.ctx != nil {
		if s.reads++; s.reads%ctxEvery == 0 {
			if err := s.ctx.Err(); err != nil {
				return "", 0, false, err
			}
		}
	}
	f := s.top()
	c := f.cur
	for {
		if c.pos >= c.end {
			if c.eof {
				return "", 0, false, nil
			}
			n, err := unix.Getdents(f.fd, c.buf)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return "", 0, false, fmt.Errorf("read directory %s: %w", s.path(len(s.frames)-1), err)
			}
			if n == 0 {
				c.eof = true
				return "", 0, false, nil
			}
			c.pos, c.end = 0, n
		}
		rec := c.buf[c.pos:c.end]
		reclen := 0
		if len(rec) >= direntHeader {
			reclen = int(binary.NativeEndian.Uint16(rec[16:18]))
		}
		if reclen < direntHeader || reclen > len(rec) {
			return "", 0, false, fmt.Errorf("read directory %s: bad dirent record: %w", s.path(len(s.frames)-1), unix.EIO)
		}
		c.pos += reclen
		f.off = int64(binary.NativeEndian.Uint64(rec[8:16]))
		raw := rec[direntHeader:reclen]
		if i := bytes.IndexByte(raw, 0); i >= 0 {
			raw = raw[:i]
		}
		if len(raw) == 0 || string(raw) == "." || string(raw) == ".." {
			continue
		}
		return string(raw), rec[18], true, nil
	}
}
