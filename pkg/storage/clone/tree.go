package clone

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// maxRaces bounds how often one entry may change type between two lookups
// before the copy gives up on it.
const maxRaces = 8

// inodeKey identifies an inode, to find hard links.
type inodeKey struct{ dev, ino uint64 }

// dirMeta is the part of a source directory's stat that setFdMeta gives its
// copy: a walk keeps one per level of its path, so it is kept small.
type dirMeta struct {
	mode, uid, gid uint32
	atim, mtim     unix.Timespec
}

// tree is the state of one Tree call. The source and destination walkers
// move in step: level i of one is the copy of level i of the other.
type tree struct {
	counter
	ctx       context.Context
	src, dst  *safefs.Walker
	dstParent int
	dstRoot   inodeKey
	dirs      []dirMeta // what each source level's copy gets once complete
	dstNames  []string  // each destination level's name below dstParent
	dstCosts  []int64   // memory of dstNames up to each level, for linkDir costs
	dirCache  *linkDir  // the current level for link records, nil when stale
	// mountFd, an fd on the destination root (not O_PATH, which
	// open_by_handle_at refuses), when destination directories are reached
	// by file handle; -1 otherwise.
	mountFd int
	// pathWork counts the names copied or resolved to record and reach link
	// sources by path; the tests check it stays linear.
	pathWork  int
	links     map[inodeKey]*link
	linkBytes int64 // memory estimate of links and their linkDirs
	linkPeak  int64 // the most linkBytes has been
	// from is an O_PATH fd on fromDir, the directory of the copy linked to
	// last, so that many names of one file (or files of one directory) do
	// not each look up its path again; -1 when none.
	from    int
	fromDir *linkDir
	base    base // Options.Base (base.go)
}

// Tree copies the directory srcDir to dstParent/dstName, which it creates,
// and returns what it did. dstName is one path component. The destination
// must not exist (the error then wraps fs.ErrExist); with o.Into it must
// instead be an empty directory (else the error wraps unix.ENOTEMPTY).
//
// srcDir must not be a symlink: it is opened with O_DIRECTORY|O_NOFOLLOW,
// which fails with ENOTDIR. The directories above it, and dstParent, are
// trusted; beneath it nothing is: the walk is confined as described in the
// package comment and holds a bounded number of fds however deep the tree.
// Regular files are cloned or copied (see Options.Reflink and File); an
// entry swapped for another type while it is being copied is looked at
// again. A destination inside the source is not copied into itself.
//
// Directories are made 0700 and get their own mode, owner, xattrs and times
// once their content is complete, so a read-only directory can be filled and
// its mtime stays the source's. Cancelling ctx stops the copy between
// entries and within a large file, with ctx's error.
//
// On error Tree stops and returns what it did so far; the partial
// destination is left in place for the caller to remove (Berth builds
// copies under temporary names and removes failed ones with
// safefs.RemoveTree).
func Tree(ctx context.Context, srcDir, dstParent, dstName string, o Options) (Stats, error) {
	t := newTree(ctx, o)
	err := t.run(srcDir, dstParent, dstName)
	t.close()
	if err != nil {
		err = fmt.Errorf("copy %s to %s: %w", srcDir, filepath.Join(dstParent, dstName), err)
	}
	if t.LinksCopied > 0 {
		klog.FromContext(ctx).V(2).Info("Hard links copied as separate files: link memory budget spent",
			"source", srcDir, "linksCopied", t.LinksCopied, "budgetBytes", maxLinkBytes)
	}
	return t.finish(), err
}

func newTree(ctx context.Context, o Options) *tree {
	return &tree{counter: counter{o: o}, ctx: ctx, links: make(map[inodeKey]*link), from: -1, mountFd: -1,
		base: base{root: -1, dir: -1, dirGen: -1}}
}

// close releases the fds run leaves open for links.
func (t *tree) close() {
	for _, fd := range []int{t.from, t.mountFd} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	t.from, t.mountFd = -1, -1
	t.base.close()
}

func (t *tree) run(srcDir, dstParent, dstName string) error {
	if err := t.o.validate(); err != nil {
		return err
	}
	if err := validName(dstName); err != nil {
		return err
	}
	srcRoot, err := unix.Open(srcDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open source: %w", err)
	}
	defer unix.Close(srcRoot)
	t.dstParent, err = openDirPath(dstParent)
	if err != nil {
		return err
	}
	defer unix.Close(t.dstParent)
	if !t.o.Into {
		if err := unix.Mkdirat(t.dstParent, dstName, 0o700); err != nil {
			return fmt.Errorf("create destination: %w", err)
		}
	}
	if err := t.openBase(); err != nil {
		return err
	}
	t.src = safefs.NewWalker(srcRoot, srcDir)
	defer t.src.Close()
	t.dst = safefs.NewWalker(t.dstParent, dstParent)
	defer t.dst.Close()
	if err := t.src.Push("."); err != nil {
		return fmt.Errorf("open source: %w", err)
	}
	if err := t.dst.Push(dstName); err != nil {
		return fmt.Errorf("open destination: %w", err)
	}
	if t.o.Into {
		if _, _, ok, err := t.dst.Next(); err != nil || ok {
			return fmt.Errorf("destination: %w", orErr(err, unix.ENOTEMPTY))
		}
	}
	var st, dst unix.Stat_t
	if err := t.statLevels(&st, &dst); err != nil {
		return err
	}
	if st.Dev == dst.Dev && st.Ino == dst.Ino {
		return fmt.Errorf("source and destination are the same directory: %w", unix.EINVAL)
	}
	t.dstRoot = inodeKey{dst.Dev, dst.Ino}
	t.enterLevel(st, dstName)
	t.probeHandles()
	return t.walk()
}

// orErr returns err, or def when err is nil.
func orErr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}

// statLevels stats the current level of both walkers.
func (t *tree) statLevels(src, dst *unix.Stat_t) error {
	sfd, err := t.src.Fd()
	if err != nil {
		return err
	}
	if err := unix.Fstat(sfd, src); err != nil {
		return fmt.Errorf("stat %s: %w", t.src.Path(), err)
	}
	dfd, err := t.dst.Fd()
	if err != nil {
		return err
	}
	if err := unix.Fstat(dfd, dst); err != nil {
		return fmt.Errorf("stat %s: %w", t.dst.Path(), err)
	}
	return nil
}

// enterLevel records a level both walkers have just pushed.
func (t *tree) enterLevel(st unix.Stat_t, name string) {
	t.dirs = append(t.dirs, dirMeta{mode: st.Mode, uid: st.Uid, gid: st.Gid, atim: st.Atim, mtim: st.Mtim})
	t.dstNames = append(t.dstNames, name)
	prev := int64(0)
	if n := len(t.dstCosts); n > 0 {
		prev = t.dstCosts[n-1]
	}
	t.dstCosts = append(t.dstCosts, prev+16+int64(len(name)))
	t.dirCache = nil
	t.base.levelChanged()
	t.Dirs++
}

// walk copies every entry below the pushed root levels, depth first.
func (t *tree) walk() error {
	for t.src.Depth() > 0 {
		if err := t.ctx.Err(); err != nil {
			return err
		}
		name, _, ok, err := t.src.Next()
		if err != nil {
			return err
		}
		if !ok {
			if err := t.leave(); err != nil {
				return err
			}
			continue
		}
		if err := t.entry(name); err != nil {
			return err
		}
	}
	return nil
}

// leave finishes the current level, whose entries are all copied: its copy
// gets the source directory's metadata, and both walkers go up.
func (t *tree) leave() error {
	sfd, err := t.src.Fd()
	if err != nil {
		return err
	}
	dfd, err := t.dst.Fd()
	if err != nil {
		return err
	}
	m := t.dirs[len(t.dirs)-1]
	st := unix.Stat_t{Mode: m.mode, Uid: m.uid, Gid: m.gid, Atim: m.atim, Mtim: m.mtim}
	if err := t.setFdMeta(sfd, dfd, &st); err != nil {
		return fmt.Errorf("%s: %w", t.dst.Path(), err)
	}
	t.src.Pop()
	t.dst.Pop()
	t.dirs = t.dirs[:len(t.dirs)-1]
	t.dstNames = t.dstNames[:len(t.dstNames)-1]
	t.dstCosts = t.dstCosts[:len(t.dstCosts)-1]
	t.dirCache = nil
	t.base.levelChanged()
	return nil
}

// entry copies the entry name of the current source level.
func (t *tree) entry(name string) error {
	for range maxRaces {
		if err := t.copyEntry(name); err != ErrChanged {
			return err
		}
	}
	return fmt.Errorf("%s keeps changing: %w", t.src.Path(name), unix.EAGAIN)
}

// copyEntry copies name after deciding its type from an O_PATH fd, which
// opens nothing (not a device, not a fifo) and refers to a symlink itself.
// ErrChanged asks for another try.
func (t *tree) copyEntry(name string) error {
	sfd, err := t.src.Fd()
	if err != nil {
		return err
	}
	pfd, err := safefs.OpenConfined(sfd, name, unix.O_PATH)
	switch err {
	case nil:
	case unix.ENOENT:
		return nil // removed since it was listed
	case unix.EXDEV:
		t.Skipped++ // a mount point: another filesystem's content
		return nil
	default:
		return fmt.Errorf("open %s: %w", t.src.Path(name), err)
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", t.src.Path(name), err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		err = t.enter(name)
	case unix.S_IFREG:
		err = t.regular(pfd, &st, name)
	case unix.S_IFLNK:
		err = t.symlink(pfd, &st, name)
	case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO:
		err = t.special(pfd, &st, name)
	default: // unix sockets
		t.Skipped++
	}
	if err != nil && err != ErrChanged {
		err = fmt.Errorf("%s: %w", t.src.Path(name), err)
	}
	return err
}

// enter pushes the directory name on both walkers, making its copy.
func (t *tree) enter(name string) error {
	switch err := t.src.Push(name); err {
	case nil:
	case unix.ENOENT:
		return nil
	case unix.ENOTDIR, unix.ELOOP:
		return ErrChanged
	case unix.EXDEV:
		t.Skipped++
		return nil
	default:
		return fmt.Errorf("open: %w", err)
	}
	sfd, err := t.src.Fd()
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(sfd, &st); err != nil {
		t.src.Pop()
		return fmt.Errorf("stat: %w", err)
	}
	if (inodeKey{st.Dev, st.Ino}) == t.dstRoot {
		// The destination inside the source: do not copy the copy.
		t.src.Pop()
		t.Skipped++
		return nil
	}
	dfd, err := t.dst.Fd()
	if err != nil {
		return err
	}
	if err := unix.Mkdirat(dfd, name, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", t.dst.Path(name), err)
	}
	if err := t.dst.Push(name); err != nil {
		return fmt.Errorf("open %s: %w", t.dst.Path(name), err)
	}
	t.enterLevel(st, name)
	return nil
}

// regular copies the regular file name (pfd is an O_PATH fd on it, st its
// stat), or links it to the copy of another name of the same inode.
func (t *tree) regular(pfd int, st *unix.Stat_t, name string) error {
	if linked, err := t.linkBase(pfd, st, name); err != nil || linked {
		return err
	}
	record, err := false, error(nil)
	if st.Nlink > 1 {
		if l := t.links[inodeKey{st.Dev, st.Ino}]; l != nil {
			return t.link(l, inodeKey{st.Dev, st.Ino}, name)
		}
		if record, err = t.linkRoom(name); err != nil {
			return err
		}
		if !record {
			t.LinksCopied++
		}
	}
	sfd, err := t.src.Fd()
	if err != nil {
		return err
	}
	rfd, err := OpenRegular(pfd, st, func(flags int) (int, error) {
		return safefs.OpenConfined(sfd, name, flags)
	})
	if err != nil {
		return err
	}
	defer unix.Close(rfd)
	dfd, err := t.dst.Fd()
	if err != nil {
		return err
	}
	wfd, err := unix.Openat(dfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", t.dst.Path(name), err)
	}
	defer unix.Close(wfd)
	if err := t.copyData(t.ctx, rfd, wfd, st.Size); err != nil {
		return err
	}
	if err := t.setFdMeta(rfd, wfd, st); err != nil {
		return err
	}
	t.Files++
	if record {
		var ws unix.Stat_t
		if err := unix.Fstat(wfd, &ws); err != nil {
			return err
		}
		if t.dirCache.refs++; t.dirCache.refs == 1 {
			t.linkBytes += t.dirCache.cost
		}
		t.linkBytes += linkCost + int64(len(name))
		t.linkPeak = max(t.linkPeak, t.linkBytes)
		t.links[inodeKey{st.Dev, st.Ino}] = &link{dir: t.dirCache, name: name, ino: ws.Ino, left: uint32(st.Nlink) - 1}
	}
	return nil
}

// symlink copies the symlink pfd (O_PATH) as a symlink with the same
// target text, never resolved.
func (t *tree) symlink(pfd int, st *unix.Stat_t, name string) error {
	target, err := Readlink(pfd, st.Size)
	if err != nil {
		return err
	}
	dfd, err := t.dst.Fd()
	if err != nil {
		return err
	}
	if err := unix.Symlinkat(target, dfd, name); err != nil {
		return fmt.Errorf("create %s: %w", t.dst.Path(name), err)
	}
	if err := t.setPathMeta(pfd, st, dfd, name); err != nil {
		return err
	}
	t.Symlinks++
	return nil
}

// Readlink reads the target of the symlink pfd, an O_PATH fd on it (st_size
// long, as lstat said; a longer target is read all the same).
func Readlink(pfd int, size int64) (string, error) {
	n := int(max(size+1, 256))
	for range 8 {
		buf := make([]byte, n)
		got, err := unix.Readlinkat(pfd, "", buf)
		if err != nil {
			return "", fmt.Errorf("readlink: %w", err)
		}
		if got < len(buf) {
			return string(buf[:got]), nil
		}
		n *= 2
	}
	return "", fmt.Errorf("readlink: %w", unix.ENAMETOOLONG)
}

// special recreates a device node or fifo with mknod, or skips it, as the
// options say. It is never opened.
func (t *tree) special(pfd int, st *unix.Stat_t, name string) error {
	if t.o.Specials == Skip {
		t.Skipped++
		return nil
	}
	dfd, err := t.dst.Fd()
	if err != nil {
		return err
	}
	if err := unix.Mknodat(dfd, name, st.Mode&(unix.S_IFMT|permBits), int(st.Rdev)); err != nil {
		return fmt.Errorf("create %s: %w", t.dst.Path(name), err)
	}
	if err := t.setPathMeta(pfd, st, dfd, name); err != nil {
		return err
	}
	t.Specials++
	return nil
}
