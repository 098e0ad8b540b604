package transfer

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
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

	// Delta pulls: the server honours the delta; base is the base tree's
	// root (O_PATH, -1 when none), baseFd its directory at the walk's level
	// for baseKey.
	delta   bool
	base    int
	baseFd  int
	baseKey string
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
		saved: time.Now(), base: -1, baseFd: -1}
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
	if r.baseFd >= 0 {
		unix.Close(r.baseFd)
	}
	if r.base >= 0 {
		unix.Close(r.base)
	}
	unix.Close(r.sfd)
}

func (r *receiver) start() error {
	fw := newFrameWriter(r.conn)
	var e enc
	_ = r.conn.SetWriteDeadline(time.Now().Add(r.o.IdleTimeout))
	var req []byte
	if r.o.Base != "" {
		dr, err := r.deltaRequest()
		if err != nil {
			return err
		}
		req = dr.encode(&e)
	} else {
		sr := r.st.request(r.o.ID, r.o.RateLimit)
		sr.Version = r.o.proto
		req = sr.encode(&e)
	}
	if len(req) > maxFrame {
		// A position deeper than a frame holds (megabytes of names): the copy
		// starts over rather than never.
		sr := (&state{}).request(r.o.ID, r.o.RateLimit)
		sr.Version = r.o.proto
		req = sr.encode(&e)
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
		err := decodeError(p)
		if errors.Is(err, ErrProtocol) && r.o.proto > 1 {
			// A well-formed request refused before anything else: its version.
			err = fmt.Errorf("%w: %w", errOldServer, err)
		}
		return err
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
	if h.Version != r.o.proto || (h.Delta && r.o.Base == "") {
		return errFrame("header of version %d (delta %v) to a request of version %d", h.Version, h.Delta, r.o.proto)
	}
	r.kind = h.Kind
	r.delta = h.Delta
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
	r.st.ServerTime, r.st.Delta = h.ServerTime, h.Delta
	if h.Delta && h.Kind == KindImage {
		// Patched in place: staging holds only the state.
	} else if h.Kind == KindImage {
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

// deltaRequest is the request of a delta pull: never a resume; for an image
// base, the hashes of its chunks, taken again by every attempt.
func (r *receiver) deltaRequest() (*request, error) {
	req := &request{Version: r.o.proto, ID: r.o.ID, RateLimit: r.o.RateLimit, Delta: true,
		Generation: r.o.BaseGeneration, Chunk: DeltaChunk}
	if !r.o.BaseSince.IsZero() {
		req.Since = r.o.BaseSince.UnixNano()
	}
	var st unix.Stat_t
	if err := unix.Lstat(r.o.Base, &st); err != nil {
		return nil, fmt.Errorf("base %s: %w", r.o.Base, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		req.Kind = KindTree
	case unix.S_IFREG:
		req.Kind = KindImage
		req.Chunk = deltaChunk(st.Size)
		if r.o.proto < 2 {
			break // no delta in version 1: the image comes whole
		}
		var err error
		if req.Hashes, err = hashImage(r.o.Base, req.Chunk); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("base %s is neither a directory nor a regular file: %w", r.o.Base, ErrNotBase)
	}
	return req, nil
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
		case t == fKeepalive:
			continue
		case t == fError:
			return decodeError(p)
		case t == fEnd:
			return r.end()
		case t == fData:
			err = r.data(p)
		case t == fFileEnd:
			err = r.fileEnd(p)
		case t == fZero:
			err = r.zero(p)
		case r.file != nil:
			err = errFrame("%s frame inside a file", t)
		case r.rootDone:
			err = errFrame("%s frame after the root", t)
		case t == fFile:
			err = r.fileStart(p)
		case t == fUnchanged && r.kind == KindTree:
			err = r.unchanged(p)
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
	// Only trees have named partial files: an image's is always continued.
	dfd, err := r.walk.Fd()
	if err != nil {
		return err
	}
	name := r.leftover
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
		if r.delta {
			// The base itself (its path is the caller's, trusted), patched.
			f.fd, err = unix.Open(r.o.Base, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		} else {
			f.fd, err = unix.Openat(r.sfd, stagingData, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
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
	// this side, maybe more): the rest comes again. A patched base keeps its
	// content: the chunks that differ come.
	if r.delta && r.kind == KindImage {
	} else if err := unix.Ftruncate(f.fd, f.written); err != nil {
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
func (r *receiver) fileEnd(p []byte) error {
	f := r.file
	if f == nil {
		return errFrame("file end outside a file")
	}
	if r.delta && r.kind == KindImage {
		d := &dec{b: p}
		skipped := d.i()
		if err := d.end(); err != nil {
			return err
		}
		if skipped < 0 || skipped > f.size {
			return errFrame("%d bytes skipped of %d", skipped, f.size)
		}
		r.st.Skipped += skipped
		r.o.Progress.Skipped.Add(skipped)
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
