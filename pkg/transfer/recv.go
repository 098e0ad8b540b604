package transfer

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/berth-csi/berth/pkg/storage/clone"
	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// receiver applies one attempt's records to the staging copy. Everything it
// makes is beneath the staging directory: entries are made by one-component
// names in the directory the walk holds (an fd reached by confined lookups),
// and a hard link may only name a regular file beneath the copy's root.
type receiver struct {
	ctx   context.Context
	o     *PullOptions
	st    *state
	conn  *tls.Conn
	fr    *frameReader
	sfd   int // the staging directory, O_PATH
	kind  Kind
	saved time.Time // the last checkpoint

	// Trees: the walk (anchored at the staging directory, level 1 is the
	// copy's root), the names of its levels below the root, and the last
	// record applied: the position is cur + last (or cur alone after an enter).
	walk     *safefs.Walker
	root     int // the copy's root, O_PATH, for link lookups
	cur      []string
	last     string
	step     uint8
	rootDone bool
	// leftover is the partial file an earlier attempt left, which the first
	// record either continues or replaces; first is true until a record came.
	leftover string
	first    bool
	resumed  bool

	file *recvFile
}

// recvFile is the regular file (or image) being received.
type recvFile struct {
	fd      int
	name    string
	size    int64
	meta    clone.Meta
	version fileVersion
	written int64 // everything below it is as the source's
}

// newReceiver sends the request, reads the header and readies the staging copy:
// made afresh, or positioned where the state says for a resumed attempt.
func newReceiver(ctx context.Context, o *PullOptions, st *state, conn *tls.Conn) (*receiver, error) {
	sfd, err := unix.Open(o.Staging, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open staging %s: %w", o.Staging, err)
	}
	r := &receiver{ctx: ctx, o: o, st: st, conn: conn, fr: newFrameReader(conn), sfd: sfd, root: -1, first: true,
		saved: time.Now()}
	if err := r.start(); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *receiver) close() {
	if r.file != nil {
		unix.Close(r.file.fd)
		r.file = nil
	}
	if r.walk != nil {
		r.walk.Close()
	}
	if r.root >= 0 {
		unix.Close(r.root)
	}
	unix.Close(r.sfd)
}

func (r *receiver) start() error {
	fw := newFrameWriter(r.conn)
	var e enc
	_ = r.conn.SetWriteDeadline(time.Now().Add(r.o.IdleTimeout))
	req := r.st.request(r.o.ID, r.o.RateLimit).encode(&e)
	if len(req) > maxFrame {
		// A position deeper than a frame holds (megabytes of names): the copy
		// starts over rather than never.
		req = (&state{}).request(r.o.ID, r.o.RateLimit).encode(&e)
	}
	if err := fw.frame(fRequest, req); err != nil {
		return err
	}
	if err := fw.flush(); err != nil {
		return err
	}
	t, p, err := r.next()
	if err != nil {
		return err
	}
	switch t {
	case fError:
		return decodeError(p)
	case fHeader:
	default:
		return errFrame("%s frame instead of a header", t)
	}
	h, err := decodeHeader(p)
	if err != nil {
		return err
	}
	if r.o.MaxBytes > 0 && (h.Total > r.o.MaxBytes || (h.Kind == KindImage && h.SizeBytes > r.o.MaxBytes)) {
		return fmt.Errorf("source of %d bytes (%d of data), at most %d accepted: %w", h.SizeBytes, h.Total, r.o.MaxBytes, ErrTooLarge)
	}
	r.kind = h.Kind
	r.o.Progress.Total.Store(h.Total)
	logger := klog.FromContext(r.ctx)
	if h.Resumed {
		if !r.st.Started || h.Kind != r.st.Kind || h.Generation != r.st.Generation {
			return errFrame("resumed a copy this client does not have")
		}
		r.o.Progress.Resumes.Add(1)
		r.resumed = true
		logger.V(2).Info("Transfer resumed", "bytes", r.st.Bytes)
		if err := r.resume(); err != nil {
			// The staged copy is not what its state says: start over.
			return fmt.Errorf("%w: staged copy: %w", errSourceChanged, err)
		}
		return nil
	}
	if r.st.Started {
		logger.V(2).Info("Transfer starting over: the server cannot go on from the staged copy")
	}
	if err := wipe(r.o.Staging, r.st); err != nil {
		return err
	}
	r.st.Started, r.st.Generation, r.st.Kind = true, h.Generation, h.Kind
	r.st.SizeBytes, r.st.FSType, r.st.AccessType = h.SizeBytes, h.FSType, h.AccessType
	r.st.Path, r.st.Step, r.st.Partial = nil, stepEnter, nil
	if h.Kind == KindImage {
		fd, err := unix.Openat(r.sfd, stagingData, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("create %s: %w", stagingData, err)
		}
		unix.Close(fd)
	} else if err := unix.Mkdirat(r.sfd, stagingData, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", stagingData, err)
	}
	// Saved at once: the staged copy now belongs to this generation.
	if err := r.st.save(r.o.Staging); err != nil {
		return err
	}
	return r.openRoot(nil)
}

// openRoot opens the copy's root for a tree and enters the directories of path.
func (r *receiver) openRoot(path []string) error {
	if r.kind == KindImage {
		return nil
	}
	var err error
	if r.root, err = safefs.OpenConfined(r.sfd, stagingData, unix.O_PATH|unix.O_DIRECTORY); err != nil {
		return fmt.Errorf("open %s: %w", stagingData, err)
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

// next reads a frame within the idle timeout.
func (r *receiver) next() (frameType, []byte, error) {
	_ = r.conn.SetReadDeadline(time.Now().Add(r.o.IdleTimeout))
	t, p, err := r.fr.next()
	if err != nil && refusedTLS(err) {
		err = fmt.Errorf("%w: %w", ErrRefused, err)
	}
	return t, p, err
}

// run applies records up to the end frame.
func (r *receiver) run() error {
	for {
		t, p, err := r.next()
		if err != nil {
			return err
		}
		switch {
		case t == fError:
			return decodeError(p)
		case t == fEnd:
			return r.end()
		case t == fData:
			err = r.data(p)
		case t == fFileEnd:
			err = r.fileEnd()
		case r.file != nil:
			err = errFrame("%s frame inside a file", t)
		case r.rootDone:
			err = errFrame("%s frame after the root", t)
		case t == fFile:
			err = r.fileStart(p)
		case r.kind == KindTree:
			err = r.treeRecord(t, p)
		default:
			err = errFrame("%s frame in an image", t)
		}
		if err != nil {
			return err
		}
		if time.Since(r.saved) >= r.o.CheckpointInterval {
			if err := r.checkpoint(); err != nil {
				return err
			}
		}
	}
}

// end checks that the copy is whole, flushes it and records it complete.
func (r *receiver) end() error {
	if r.file != nil || (r.kind == KindTree && !r.rootDone) || (r.kind == KindImage && r.step != stepEntry) {
		return errFrame("end before the source is complete")
	}
	r.st.Complete = true
	return r.checkpoint()
}

// checkpoint flushes the staging filesystem, then saves the position: the state
// never claims what the disk might not hold.
func (r *receiver) checkpoint() error {
	if !r.st.Started {
		return nil
	}
	fd, err := unix.Openat(r.sfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	err = unix.Syncfs(fd)
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("syncfs %s: %w", r.o.Staging, err)
	}
	if r.walk != nil || r.kind == KindImage {
		r.st.Path = r.st.Path[:0]
		for _, n := range r.cur {
			r.st.Path = append(r.st.Path, []byte(n))
		}
		if r.last != "" {
			r.st.Path = append(r.st.Path, []byte(r.last))
		}
		r.st.Step = r.step
		r.st.Partial = nil
		if f := r.file; f != nil {
			r.st.Partial = &partialS{Name: []byte(f.name), Offset: f.written, Version: f.version}
		}
	}
	r.saved = time.Now()
	return r.st.save(r.o.Staging)
}

// applied moves the position past a record: an entry of the current level
// (name), or, with stepEnter or stepLeave, a directory entered or left.
func (r *receiver) applied(step uint8, name string) {
	r.step, r.last, r.first = step, name, false
	r.o.Progress.Entries.Add(1)
}

// settleLeftover runs before the first record: a partial file that record does
// not continue is removed, so the record finds its name free.
func (r *receiver) settleLeftover(continues bool) error {
	if !r.first || r.leftover == "" || continues {
		return nil
	}
	dfd := r.sfd
	name := stagingData
	if r.kind == KindTree {
		var err error
		if dfd, err = r.walk.Fd(); err != nil {
			return err
		}
		name = r.leftover
	}
	if r.kind == KindImage {
		// The image file stays; its data starts over.
		fd, err := unix.Openat(dfd, name, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Ftruncate(fd, 0)
	}
	if err := unix.Unlinkat(dfd, name, 0); err != nil && err != unix.ENOENT {
		return fmt.Errorf("remove partial %s: %w", r.walk.Path(name), err)
	}
	return nil
}

// fileStart opens the file (or image) a file record announces.
func (r *receiver) fileStart(p []byte) error {
	d := &dec{b: p}
	f := &recvFile{name: d.str(maxName), fd: -1}
	f.meta = decodeMeta(d)
	f.size, f.version, f.written = d.i(), d.ver(), d.i()
	if err := d.end(); err != nil {
		return err
	}
	if f.size < 0 || f.written < 0 || f.written > f.size {
		return errFrame("file of %d bytes from %d", f.size, f.written)
	}
	if r.o.MaxBytes > 0 && r.kind == KindImage && f.size > r.o.MaxBytes {
		return fmt.Errorf("image of %d bytes, at most %d accepted: %w", f.size, r.o.MaxBytes, ErrTooLarge)
	}
	continues := f.written > 0
	if continues {
		lp := r.st.Partial
		if !r.first || lp == nil || f.name != string(lp.Name) || f.written != lp.Offset || f.version != lp.Version {
			return errFrame("file %q continued from %d, which this client did not ask for", f.name, f.written)
		}
	}
	if err := r.settleLeftover(continues); err != nil {
		return err
	}
	r.first = false
	var err error
	switch {
	case r.kind == KindImage:
		if f.name != "" || r.step == stepEntry {
			return errFrame("a second file in an image")
		}
		f.fd, err = unix.Openat(r.sfd, stagingData, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	default:
		if err := checkName(f.name); err != nil {
			return err
		}
		dfd, ferr := r.walk.Fd()
		if ferr != nil {
			return ferr
		}
		if continues {
			f.fd, err = unix.Openat(dfd, f.name, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		} else {
			f.fd, err = unix.Openat(dfd, f.name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		}
	}
	if err != nil {
		return r.made(f.name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(f.fd)
		return fmt.Errorf("%s is not a regular file: %w", f.name, unix.EINVAL)
	}
	// A continued file holds what came up to f.written (and, after a crash of
	// this side, maybe more): the rest comes again.
	if err := unix.Ftruncate(f.fd, f.written); err != nil {
		unix.Close(f.fd)
		return fmt.Errorf("truncate %s: %w", f.name, err)
	}
	r.file = f
	r.o.Progress.Resumed.Add(f.written)
	return nil
}

// made turns the error of making name into a protocol violation when the
// sender caused it (a name sent twice, made through a non-directory).
func (r *receiver) made(name string, err error) error {
	switch err {
	case unix.EEXIST, unix.ENOTDIR, unix.ELOOP, unix.EISDIR:
		return errFrame("cannot make %q: %v", name, err)
	}
	return fmt.Errorf("make %q: %w", name, err)
}

// data writes a data frame at its offset: in order, within the file's size.
func (r *receiver) data(p []byte) error {
	f := r.file
	if f == nil || len(p) < 8 {
		return errFrame("data outside a file")
	}
	off := int64(binary.BigEndian.Uint64(p))
	p = p[8:]
	if off < f.written || off > f.size || int64(len(p)) > f.size-off {
		return errFrame("data at %d+%d in a file of %d bytes written up to %d", off, len(p), f.size, f.written)
	}
	if r.o.MaxBytes > 0 && r.st.Bytes+int64(len(p)) > r.o.MaxBytes {
		return fmt.Errorf("more than %d bytes of data: %w", r.o.MaxBytes, ErrTooLarge)
	}
	for len(p) > 0 {
		n, err := unix.Pwrite(f.fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
		p, off = p[n:], off+int64(n)
		r.st.Bytes += int64(n)
		r.o.Progress.Bytes.Add(int64(n))
	}
	f.written = off
	return nil
}

// fileEnd sets the file's size (a trailing hole stays a hole) and metadata.
func (r *receiver) fileEnd() error {
	f := r.file
	if f == nil {
		return errFrame("file end outside a file")
	}
	r.file = nil
	defer unix.Close(f.fd)
	if err := unix.Ftruncate(f.fd, f.size); err != nil {
		return fmt.Errorf("truncate %s: %w", f.name, err)
	}
	if _, err := clone.SetFdMeta(f.fd, &f.meta); err != nil {
		return fmt.Errorf("%s: %w", f.name, err)
	}
	r.applied(stepEntry, f.name)
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
