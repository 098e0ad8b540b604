package clone

import (
	"bytes"
	"errors"
	"slices"
	"strings"

	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
)

// maxBaseLinks bounds the base inodes one copy remembers having linked (about 40
// bytes each): past it, the rest of the tree is copied in full.
const maxBaseLinks = 1 << 20

// base is an earlier copy of the same tree (Options.Base), from which a copy
// hard-links the files that did not change instead of copying them again: an
// incremental copy, as rsync's --link-dest makes. A file is taken as unchanged
// when the earlier copy holds, at the same path, a regular file of the same size,
// modification time (to the nanosecond), permission bits, owner, group and
// extended attributes. A change that keeps all of these (data rewritten and the
// mtime set back on purpose) is not seen, as with rsync's quick check.
type base struct {
	root int // O_PATH fd on Options.Base; -1 once given up (another filesystem)
	// dir is an O_PATH fd on the base's directory of the current level, for the
	// level counted by gen (-1: none there, or not opened yet).
	dir, dirGen int
	gen         int
	// used holds the base inodes linked so far: two source files are never made
	// one inode, even where the base had them as hard links of one file.
	used map[uint64]struct{}
}

func (b *base) close() {
	for _, fd := range []int{b.root, b.dir} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	b.root, b.dir = -1, -1
}

// openBase opens Options.Base, when set, for run.
func (t *tree) openBase() error {
	t.base = base{root: -1, dir: -1, dirGen: -1}
	if t.o.Base == "" {
		return nil
	}
	fd, err := unix.Open(t.o.Base, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &baseError{err}
	}
	t.base.root, t.base.used = fd, map[uint64]struct{}{}
	return nil
}

// baseError is a base that cannot be opened.
type baseError struct{ err error }

func (e *baseError) Error() string { return "open base: " + e.err.Error() }
func (e *baseError) Unwrap() error { return e.err }

// levelChanged invalidates the base directory of the current level.
func (b *base) levelChanged() { b.gen++ }

// baseDir returns the base's directory of the current destination level, -1 when
// the base has none.
func (t *tree) baseDir() int {
	b := &t.base
	if b.dirGen == b.gen {
		return b.dir
	}
	if b.dir >= 0 {
		unix.Close(b.dir)
	}
	b.dir, b.dirGen = -1, b.gen
	if fd, err := safefs.OpenDirChain(b.root, t.dstNames[1:], unix.O_PATH); err == nil {
		b.dir = fd
	}
	return b.dir
}

// linkBase links name (pfd an O_PATH fd on the source file, st its stat) to the
// base's copy of it when that is unchanged, and reports whether it did. A file
// with other names in the tree is always copied: its links are the tree's own.
func (t *tree) linkBase(pfd int, st *unix.Stat_t, name string) (bool, error) {
	b := &t.base
	if b.root < 0 || st.Nlink != 1 || len(b.used) >= maxBaseLinks {
		return false, nil
	}
	dir := t.baseDir()
	if dir < 0 {
		return false, nil
	}
	bfd, err := safefs.OpenConfined(dir, name, unix.O_PATH)
	if err != nil {
		return false, nil // not there, a symlink, or out of the base: copy
	}
	defer unix.Close(bfd)
	var bst unix.Stat_t
	if err := unix.Fstat(bfd, &bst); err != nil || !sameFile(st, &bst) {
		return false, nil
	}
	if _, dup := b.used[bst.Ino]; dup {
		return false, nil
	}
	same, err := sameXattrs(pfd, bfd)
	if err != nil || !same {
		return false, nil
	}
	dfd, err := t.dst.Fd()
	if err != nil {
		return false, err
	}
	err = unix.Linkat(unix.AT_FDCWD, safefs.ProcPath(bfd), dfd, name, unix.AT_SYMLINK_FOLLOW)
	switch {
	case err == nil:
	case errors.Is(err, unix.EXDEV):
		b.close() // the base is on another filesystem: copy everything
		return false, nil
	case errors.Is(err, unix.EMLINK), errors.Is(err, unix.ENOENT):
		return false, nil
	default:
		return false, err
	}
	b.used[bst.Ino] = struct{}{}
	t.Files++
	t.FilesLinked++
	t.BytesLinked += st.Size
	t.progress()
	return true, nil
}

// sameFile compares what the quick check compares, besides xattrs.
func sameFile(a, b *unix.Stat_t) bool {
	return b.Mode&unix.S_IFMT == unix.S_IFREG && a.Size == b.Size && a.Mtim == b.Mtim &&
		a.Mode&permBits == b.Mode&permBits && a.Uid == b.Uid && a.Gid == b.Gid
}

// sameXattrs compares the extended attributes of two O_PATH fds.
func sameXattrs(a, b int) (bool, error) {
	xa, err := ReadXattrs(a, true)
	if err != nil {
		return false, err
	}
	xb, err := ReadXattrs(b, true)
	if err != nil {
		return false, err
	}
	order := func(x, y Xattr) int { return strings.Compare(x.Name, y.Name) }
	slices.SortFunc(xa, order)
	slices.SortFunc(xb, order)
	return slices.EqualFunc(xa, xb, func(x, y Xattr) bool { return x.Name == y.Name && bytes.Equal(x.Value, y.Value) }), nil
}
