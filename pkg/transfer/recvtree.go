package transfer

import (
	"fmt"

	"github.com/berth-csi/berth/pkg/storage/clone"
	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
)

// openRoot opens the copy's root for a tree and enters the directories of path.
func (r *receiver) openRoot(path []string) error {
	if r.kind == KindImage {
		return nil
	}
	var err error
	if r.root, err = safefs.OpenConfined(r.sfd, stagingData, unix.O_PATH|unix.O_DIRECTORY); err != nil {
		return fmt.Errorf("open %s: %w", stagingData, err)
	}
	if r.delta {
		if r.base, err = unix.Open(r.o.Base, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err != nil {
			return fmt.Errorf("%w: open %s: %w", ErrNotBase, r.o.Base, err)
		}
	}
	r.walk = safefs.NewWalker(r.sfd, r.o.Staging)
	if err := r.walk.Push(stagingData); err != nil {
		return fmt.Errorf("open %s: %w", stagingData, err)
	}
	for _, n := range path {
		if err := r.walk.Push(n); err != nil {
			return fmt.Errorf("open %s: %w", r.walk.Path(n), err)
		}
		r.cur = append(r.cur, n)
	}
	return nil
}

// resume positions the walk at the state's position and removes what the
// copy holds past it (what a crash of this side left after its last
// checkpoint), except the partial file, which the first record continues or
// replaces.
func (r *receiver) resume() error {
	path := make([]string, len(r.st.Path))
	for i, n := range r.st.Path {
		path[i] = string(n)
	}
	if r.st.Partial != nil {
		r.leftover = string(r.st.Partial.Name)
	}
	if r.kind == KindImage {
		return nil
	}
	r.step = r.st.Step
	dirs := path
	if r.step != stepEnter && len(path) > 0 {
		dirs, r.last = path[:len(path)-1], path[len(path)-1]
	}
	if err := r.openRoot(nil); err != nil {
		return err
	}
	// Level by level: past the next directory of the position, everything goes.
	for i := 0; ; i++ {
		bound, keep := r.last, r.leftover
		if i < len(dirs) {
			bound, keep = dirs[i], ""
		} else if r.step == stepEnter {
			bound = "" // inside the entered directory nothing is done yet
		}
		if err := r.prune(bound, keep); err != nil {
			return err
		}
		if i == len(dirs) {
			return nil
		}
		if err := r.walk.Push(dirs[i]); err != nil {
			return fmt.Errorf("open %s: %w", r.walk.Path(dirs[i]), err)
		}
		r.cur = append(r.cur, dirs[i])
	}
}

// prune removes the entries of the current level that sort after bound (all of
// them for ""), but keep.
func (r *receiver) prune(bound, keep string) error {
	var gone []string
	for {
		n, _, ok, err := r.walk.Next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if (bound == "" || n > bound) && n != keep {
			gone = append(gone, n)
		}
	}
	if len(gone) == 0 {
		return nil
	}
	fd, err := r.walk.Fd()
	if err != nil {
		return err
	}
	for _, n := range gone {
		if err := safefs.RemoveTreeAt(r.ctx, fd, r.walk.Path(), n); err != nil {
			return err
		}
	}
	return nil
}

// treeRecord applies a directory, link, symlink or special file record.
func (r *receiver) treeRecord(t frameType, p []byte) error {
	if err := r.settleLeftover(false); err != nil {
		return err
	}
	d := &dec{b: p}
	var name string
	if t != fLeave {
		name = d.str(maxName)
		if err := checkName(name); d.err == nil && err != nil {
			return err
		}
	}
	dfd, err := r.walk.Fd()
	if err != nil {
		return err
	}
	switch t {
	case fEnter:
		if err := d.end(); err != nil {
			return err
		}
		if err := unix.Mkdirat(dfd, name, 0o700); err != nil {
			return r.made(name, err)
		}
		if err := r.walk.Push(name); err != nil {
			return r.made(name, err)
		}
		r.cur = append(r.cur, name)
		r.applied(stepEnter, "")
		return nil
	case fLeave:
		m := decodeMeta(d)
		if err := d.end(); err != nil {
			return err
		}
		if _, err := clone.SetFdMeta(dfd, &m); err != nil {
			return fmt.Errorf("%s: %w", r.walk.Path(), err)
		}
		r.walk.Pop()
		if len(r.cur) == 0 {
			r.rootDone = true
			r.applied(stepLeave, "")
			return nil
		}
		left := r.cur[len(r.cur)-1]
		r.cur = r.cur[:len(r.cur)-1]
		r.applied(stepLeave, left)
		return nil
	case fLink:
		target := d.strs(maxPath, maxName)
		if err := d.end(); err != nil {
			return err
		}
		if err := r.link(dfd, name, target); err != nil {
			return err
		}
	case fSymlink, fSpecial:
		if err := r.node(t, dfd, name, d); err != nil {
			return err
		}
	default:
		return errFrame("%s frame in a tree", t)
	}
	r.applied(stepEntry, name)
	return nil
}

// link makes name a hard link to target, a regular file beneath the copy's
// root reached by confined lookups.
func (r *receiver) link(dfd int, name string, target []string) error {
	if len(target) == 0 {
		return errFrame("link %q to nothing", name)
	}
	for _, n := range target {
		if err := checkName(n); err != nil {
			return err
		}
	}
	dir, err := safefs.OpenDirChain(r.root, target[:len(target)-1], unix.O_PATH)
	if err == nil {
		defer unix.Close(dir)
		var st unix.Stat_t
		err = unix.Fstatat(dir, target[len(target)-1], &st, unix.AT_SYMLINK_NOFOLLOW)
		if err == nil && st.Mode&unix.S_IFMT != unix.S_IFREG {
			return errFrame("link %q to %q, not a regular file", name, target)
		}
	}
	if err == unix.ENOENT && r.resumed {
		// Its first name came in an earlier attempt, from a source that has
		// changed since: this copy cannot be finished, another can.
		return fmt.Errorf("link %q to %q: %w", name, target, errSourceChanged)
	}
	if err != nil {
		return errFrame("link %q to %q: %v", name, target, err)
	}
	if err := unix.Linkat(dir, target[len(target)-1], dfd, name, 0); err != nil {
		return r.made(name, err)
	}
	return nil
}

// node makes a symlink (its target text as sent, never resolved here) or a
// device node or fifo, then gives it its metadata.
func (r *receiver) node(t frameType, dfd int, name string, d *dec) error {
	m := decodeMeta(d)
	if t == fSymlink {
		target := d.str(maxTarget)
		if err := d.end(); err != nil {
			return err
		}
		if target == "" || containsNUL(target) {
			return errFrame("symlink %q to %q", name, target)
		}
		if err := unix.Symlinkat(target, dfd, name); err != nil {
			return r.made(name, err)
		}
	} else {
		typ, rdev := uint32(d.u()), d.u()
		if err := d.end(); err != nil {
			return err
		}
		if typ != unix.S_IFCHR && typ != unix.S_IFBLK && typ != unix.S_IFIFO {
			return errFrame("special file %q of type %o", name, typ)
		}
		if err := unix.Mknodat(dfd, name, typ|m.Mode, int(rdev)); err != nil {
			return r.made(name, err)
		}
	}
	if _, err := clone.SetPathMeta(dfd, name, &m, t == fSymlink); err != nil {
		return fmt.Errorf("%s: %w", r.walk.Path(name), err)
	}
	return nil
}
