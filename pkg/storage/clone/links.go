package clone

import (
	"fmt"
	"slices"

	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
)

// maxLinkBytes bounds the memory a copy spends remembering the first copies of
// multiply-linked files whose other names it has not met yet. A record is
// dropped once all its names are linked; past the budget, further
// multiply-linked files are copied without a record, so their later names
// become independent copies (Stats.LinksCopied). A variable so that internal
// tests can make it small.
var maxLinkBytes int64 = 64 << 20

// linkCost and linkDirCost estimate a link record and a shared directory
// record (map entry, struct, slice headers) without their strings.
const (
	linkCost    = 128
	linkDirCost = 64
)

// link records the first copy of a source inode with several names, so the
// other names become hard links to it.
type link struct {
	dir  *linkDir // destination directory of the copy
	name string
	ino  uint64 // the copy's inode, checked before linking to it
	left uint32 // names of the source inode not seen yet
}

// linkDir is a destination directory, shared by the link records of the files
// copied into it: a file handle (open_by_handle_at reaches it in one step,
// whatever its depth) or, where handles do not work, its names below
// dstParent.
type linkDir struct {
	handle unix.FileHandle
	names  []string // nil with a handle
	refs   int
	cost   int64
}

// levelDir returns the linkDir of the current destination level, made on
// first use: a file handle, or a copy of the names when handles do not work
// (then its cost grows with the depth, and so does the lookup that reaches
// it).
func (t *tree) levelDir() (*linkDir, error) {
	if t.dirCache != nil {
		return t.dirCache, nil
	}
	if t.mountFd >= 0 {
		dfd, err := t.dst.Fd()
		if err != nil {
			return nil, err
		}
		h, _, err := unix.NameToHandleAt(dfd, "", unix.AT_EMPTY_PATH)
		if err != nil {
			return nil, fmt.Errorf("file handle of %s: %w", t.dst.Path(), err)
		}
		t.dirCache = &linkDir{handle: h, cost: linkDirCost + int64(len(h.Bytes()))}
		return t.dirCache, nil
	}
	t.pathWork += len(t.dstNames)
	t.dirCache = &linkDir{names: slices.Clone(t.dstNames), cost: linkDirCost + t.dstCosts[len(t.dstCosts)-1]}
	return t.dirCache, nil
}

// probeHandles decides whether destination directories can be reached by
// file handle: name_to_handle_at must work on this filesystem, and
// open_by_handle_at needs CAP_DAC_READ_SEARCH.
func (t *tree) probeHandles() {
	dfd, err := t.dst.Fd()
	if err != nil {
		return
	}
	h, _, err := unix.NameToHandleAt(dfd, "", unix.AT_EMPTY_PATH)
	if err != nil {
		return
	}
	mfd, err := unix.Openat(dfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	fd, err := unix.OpenByHandleAt(mfd, h, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		unix.Close(mfd)
		return
	}
	unix.Close(fd)
	t.mountFd = mfd
}

// linkRoom reports whether a link record for name, in the current level, fits
// in maxLinkBytes.
func (t *tree) linkRoom(name string) (bool, error) {
	d, err := t.levelDir()
	if err != nil {
		return false, err
	}
	need := linkCost + int64(len(name))
	if d.refs == 0 {
		need += d.cost
	}
	return t.linkBytes+need <= maxLinkBytes, nil
}

// dropLink forgets the record of key, all its names being linked.
func (t *tree) dropLink(l *link, key inodeKey) {
	delete(t.links, key)
	t.linkBytes -= linkCost + int64(len(l.name))
	if l.dir.refs--; l.dir.refs == 0 {
		t.linkBytes -= l.dir.cost
	}
}

// linkFrom returns an O_PATH fd on the destination directory d, owned by t.
func (t *tree) linkFrom(d *linkDir) (int, error) {
	if t.fromDir == d {
		return t.from, nil
	}
	var fd int
	var err error
	if d.names == nil {
		fd, err = unix.OpenByHandleAt(t.mountFd, d.handle, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC)
	} else {
		t.pathWork += len(d.names)
		fd, err = safefs.OpenDirChain(t.dstParent, d.names, unix.O_PATH)
	}
	if err != nil {
		return -1, err
	}
	if t.from >= 0 {
		unix.Close(t.from)
	}
	t.from, t.fromDir = fd, d
	return fd, nil
}

// link makes name, in the current destination level, a hard link to l.
func (t *tree) link(l *link, key inodeKey, name string) error {
	dfd, err := t.dst.Fd()
	if err != nil {
		return err
	}
	from := dfd
	if l.dir != t.dirCache {
		from, err = t.linkFrom(l.dir)
		if err != nil {
			return fmt.Errorf("open directory of %s: %w", l.name, err)
		}
	}
	var st unix.Stat_t
	if err := unix.Fstatat(from, l.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("stat copy %s: %w", l.name, err)
	}
	if st.Ino != l.ino || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("copy %s was replaced: %w", l.name, unix.ESTALE)
	}
	if err := unix.Linkat(from, l.name, dfd, name, 0); err != nil {
		return fmt.Errorf("link to %s: %w", l.name, err)
	}
	t.Files++
	if l.left--; l.left == 0 {
		t.dropLink(l, key)
	}
	return nil
}
