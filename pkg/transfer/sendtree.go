package transfer

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/berth-csi/berth/pkg/storage/clone"
	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
)

// maxRaces bounds how often one entry may change type between two lookups
// before the walk gives up on it.
const maxRaces = 8

// maxLinkBytes bounds the memory a sender spends remembering where it sent the
// first name of a multiply-linked file whose other names are still to come: past
// it, later names are sent as independent copies (as clone.Tree does).
var maxLinkBytes int64 = 64 << 20

// treeStream sends a directory tree in a fixed order: depth first, the names of
// each directory sorted bytewise. The order is what lets an interrupted transfer
// resume: the client's position (the last record it applied) says which records
// it has, and a new walk of an unchanged tree meets them in the same order.
//
// The walk is safefs's (confined, bounded fds whatever the depth); each level
// holds its names while it is sent, the memory a sorted order costs.
type treeStream struct {
	ctx  context.Context
	root int // the source directory, O_RDONLY
	walk *safefs.Walker
	lvls []*level
	path []string // the names of lvls below the root

	// The resume position (request.Path, Step) while it is being skipped to.
	resuming bool
	pos      []string
	step     uint8
	partial  partial
	sent     bool // a record went out since the resume position

	// since, in a delta: regular files of one link whose ctime (Unix
	// nanoseconds) is before it go as fUnchanged records; 0: no delta.
	since int64

	links     map[inodeKey]*linkRec
	linkBytes int64
	s         *sender
	keep      time.Time // the last frame sent while skipping
}

// keepaliveEvery is how often a sender that skips what the client has (a
// metadata walk, which can take minutes on a large tree) tells the client it
// is still there, well within the client's idle timeout.
const keepaliveEvery = 5 * time.Second

// level is one directory of the walk.
type level struct {
	names []string
	next  int
	meta  clone.Meta // its stat when entered
	// chain: the level lies on the resume position's path; skip: it lies before
	// the position, so nothing of it is sent (its files are only looked at for
	// hard links).
	chain, skip bool
	link        *linkDir // its names, for link records, made on first use
}

type inodeKey struct{ dev, ino uint64 }

// linkRec is where a multiply-linked file's first name went.
type linkRec struct {
	dir  *linkDir
	name string
	left uint32 // names not met yet
}

type linkDir struct {
	names []string
	refs  int
}

// linkCost estimates a link record's memory besides its strings.
const linkCost = 128

func openTree(ctx context.Context, src *Source, req *request) (stream, error) {
	root, err := unix.Open(src.Path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", src.Path, err)
	}
	t := &treeStream{ctx: ctx, root: root, walk: safefs.NewWalker(root, src.Path), links: make(map[inodeKey]*linkRec),
		keep: time.Now()}
	if req.Started && req.Kind == KindTree && req.Generation == src.Generation && t.chainExists(req) {
		t.resuming, t.pos, t.step, t.partial = true, req.Path, req.Step, req.Partial
	}
	if req.Delta && req.Kind == KindTree && req.Generation == src.Generation && req.Since > 0 {
		t.since = req.Since - int64(ctimeMargin)
	}
	return t, nil
}

// chainExists reports whether the directories of the resume position are still
// directories of the source, so the walk can go on from it.
func (t *treeStream) chainExists(req *request) bool {
	dirs := req.Path
	if req.Step != stepEnter && len(dirs) > 0 {
		dirs = dirs[:len(dirs)-1]
	}
	fd, err := safefs.OpenDirChain(t.root, dirs, unix.O_PATH)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

func (t *treeStream) prepare(h *header) { h.Resumed, h.Delta = t.resuming, t.since > 0 }

func (t *treeStream) close() {
	t.walk.Close()
	unix.Close(t.root)
}

func (t *treeStream) send(s *sender) error {
	t.s = s
	if err := t.push(".", t.resuming, false); err != nil {
		return err
	}
	for len(t.lvls) > 0 {
		if err := t.ctx.Err(); err != nil {
			return err
		}
		lv := t.lvls[len(t.lvls)-1]
		if lv.next == len(lv.names) {
			if err := t.leave(); err != nil {
				return err
			}
			continue
		}
		name := lv.names[lv.next]
		lv.next++
		if err := t.entry(lv, name); err != nil {
			return fmt.Errorf("%s: %w", t.walk.Path(name), err)
		}
	}
	return nil
}

// push enters the directory name of the current level (the root for "."),
// reads its names and, unless the level is skipped or already on the client's
// side (a level of the resume position's path), sends its record.
func (t *treeStream) push(name string, chain, skip bool) error {
	if err := t.walk.Push(name); err != nil {
		return err
	}
	fd, err := t.walk.Fd()
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.walk.Pop()
		return err
	}
	lv := &level{meta: clone.MetaOf(&st), chain: chain, skip: skip}
	for {
		n, _, ok, err := t.walk.Next()
		if err != nil {
			t.walk.Pop()
			return err
		}
		if !ok {
			break
		}
		lv.names = append(lv.names, n)
	}
	slices.Sort(lv.names)
	t.lvls = append(t.lvls, lv)
	if name != "." {
		t.path = append(t.path, name)
		if !chain && !skip {
			t.sent = true
			t.s.prog.Entries.Add(1)
			e := t.s.e.reset()
			e.str(name)
			return t.s.fw.frame(fEnter, e.b)
		}
	}
	return nil
}

// leave ends the current level: its metadata (xattrs read now), then up.
func (t *treeStream) leave() error {
	lv := t.lvls[len(t.lvls)-1]
	if !lv.skip {
		fd, err := t.walk.Fd()
		if err != nil {
			return err
		}
		m := lv.meta
		if m.Xattrs, err = clone.ReadXattrs(fd, false); err != nil {
			return fmt.Errorf("%s: %w", t.walk.Path(), err)
		}
		e := t.s.e.reset()
		encodeMeta(e, &m)
		if err := t.s.fw.frame(fLeave, e.b); err != nil {
			return err
		}
		t.sent = true
	}
	t.walk.Pop()
	t.lvls = t.lvls[:len(t.lvls)-1]
	if len(t.path) > 0 && len(t.lvls) > 0 {
		t.path = t.path[:len(t.path)-1]
	}
	return nil
}

// place says where the entry name of level lv stands against the resume
// position: before it (skip), on its path (descend without sending the
// directory's record), or after it.
func (t *treeStream) place(lv *level, name string) (skip, chain bool) {
	if lv.skip {
		return true, false
	}
	d := len(t.path) // the depth of lv's entries
	if !lv.chain || d >= len(t.pos) {
		return false, false
	}
	switch c := t.pos[d]; {
	case name < c:
		return true, false
	case name > c:
		return false, false
	case d < len(t.pos)-1 || t.step == stepEnter:
		return false, true
	default: // the position's own entry, done
		return true, false
	}
}

// entry sends (or skips) the entry name of level lv.
func (t *treeStream) entry(lv *level, name string) error {
	skip, chain := t.place(lv, name)
	if skip && time.Since(t.keep) >= keepaliveEvery {
		t.keep = time.Now()
		if err := t.s.fw.frame(fKeepalive, nil); err != nil {
			return err
		}
		if err := t.s.fw.flush(); err != nil {
			return err
		}
	}
	for range maxRaces {
		if err := t.entryOnce(name, skip, chain); err != clone.ErrChanged {
			return err
		}
	}
	return fmt.Errorf("keeps changing: %w", unix.EAGAIN)
}

func (t *treeStream) entryOnce(name string, skip, chain bool) error {
	dfd, err := t.walk.Fd()
	if err != nil {
		return err
	}
	pfd, err := safefs.OpenConfined(dfd, name, unix.O_PATH)
	switch err {
	case nil:
	case unix.ENOENT, unix.EXDEV:
		// Removed since it was listed, or a mount point (another filesystem's
		// content, as clone.Tree leaves out).
		if chain {
			return fmt.Errorf("%w: %w", errSourceChanged, err)
		}
		return nil
	default:
		return err
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return err
	}
	typ := st.Mode & unix.S_IFMT
	if chain && typ != unix.S_IFDIR {
		return fmt.Errorf("%w: no longer a directory", errSourceChanged)
	}
	switch typ {
	case unix.S_IFDIR:
		switch err := t.push(name, chain, skip); err {
		case nil:
			return nil
		case unix.ENOTDIR, unix.ELOOP:
			return clone.ErrChanged
		case unix.ENOENT, unix.EXDEV:
			return nil
		default:
			return err
		}
	case unix.S_IFREG:
		return t.regular(pfd, &st, name, skip)
	case unix.S_IFLNK, unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO:
		if skip {
			return nil
		}
		return t.node(pfd, &st, name)
	}
	return nil // unix sockets: meaningless without their listener
}

// regular sends a regular file, or a link to where its first name went.
func (t *treeStream) regular(pfd int, st *unix.Stat_t, name string, skip bool) error {
	key := inodeKey{st.Dev, st.Ino}
	if st.Nlink > 1 {
		if l := t.links[key]; l != nil {
			if l.left--; l.left == 0 {
				t.dropLink(key, l)
			}
			if skip {
				return nil
			}
			return t.link(l, name)
		}
		t.recordLink(key, name, uint32(st.Nlink)-1)
	}
	if skip {
		return nil
	}
	if st.Nlink == 1 && st.Ctim.Sec*1e9+st.Ctim.Nsec < t.since {
		return t.unchanged(pfd, st, name)
	}
	dfd, err := t.walk.Fd()
	if err != nil {
		return err
	}
	rfd, err := clone.OpenRegular(pfd, st, func(flags int) (int, error) {
		return safefs.OpenConfined(dfd, name, flags)
	})
	if err != nil {
		return err
	}
	defer unix.Close(rfd)
	m := clone.MetaOf(st)
	if m.Xattrs, err = clone.ReadXattrs(rfd, false); err != nil {
		return err
	}
	offset := int64(0)
	if !t.sent && t.resuming && name == t.partial.Name && t.partial.Version == versionOf(st) &&
		t.partial.Offset <= st.Size {
		offset = t.partial.Offset
	}
	t.sent = true
	return t.s.file(name, &m, rfd, st.Size, versionOf(st), offset)
}

// node sends a symlink (its target text, never resolved), a device node or a
// fifo (never opened).
func (t *treeStream) node(pfd int, st *unix.Stat_t, name string) error {
	m := clone.MetaOf(st)
	xs, err := clone.ReadXattrs(pfd, true)
	if err != nil && err != unix.ENOENT { // ENOENT: no /proc, no xattrs
		return err
	}
	m.Xattrs = xs
	e := t.s.e.reset()
	e.str(name)
	encodeMeta(e, &m)
	ft := fSpecial
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		target, err := clone.Readlink(pfd, st.Size)
		if err != nil {
			return err
		}
		ft = fSymlink
		e.str(target)
	} else {
		e.u(uint64(st.Mode & unix.S_IFMT))
		e.u(st.Rdev)
	}
	t.sent = true
	t.s.prog.Entries.Add(1)
	return t.s.fw.frame(ft, e.b)
}

// recordLink remembers where the first name of a multiply-linked file goes,
// within maxLinkBytes.
func (t *treeStream) recordLink(key inodeKey, name string, left uint32) {
	lv := t.lvls[len(t.lvls)-1]
	need := linkCost + int64(len(name))
	if lv.link == nil || lv.link.refs == 0 {
		for _, n := range t.path {
			need += 16 + int64(len(n))
		}
	}
	if t.linkBytes+need > maxLinkBytes {
		return // later names become copies
	}
	if lv.link == nil {
		lv.link = &linkDir{names: slices.Clone(t.path)}
	}
	lv.link.refs++
	t.linkBytes += need
	t.links[key] = &linkRec{dir: lv.link, name: name, left: left}
}

func (t *treeStream) dropLink(key inodeKey, l *linkRec) {
	delete(t.links, key)
	t.linkBytes -= linkCost + int64(len(l.name))
	if l.dir.refs--; l.dir.refs == 0 {
		for _, n := range l.dir.names {
			t.linkBytes -= 16 + int64(len(n))
		}
	}
}

// link sends name as a hard link to the path of l.
func (t *treeStream) link(l *linkRec, name string) error {
	e := t.s.e.reset()
	e.str(name)
	e.u(uint64(len(l.dir.names) + 1))
	for _, n := range l.dir.names {
		e.str(n)
	}
	e.str(l.name)
	t.sent = true
	t.s.prog.Entries.Add(1)
	return t.s.fw.frame(fLink, e.b)
}
