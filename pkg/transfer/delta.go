package transfer

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/berth-csi/berth/pkg/storage/clone"
	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
)

// Delta pulls bring a complete copy that an earlier Pull made (the base) up to
// date with its source, sending only what changed since:
//
//   - Trees: a regular file with one link whose ctime is older than the earlier
//     Pull's server start time (less ctimeMargin) was read by that Pull after
//     its last change, so the base holds it as it is: the server sends an
//     fUnchanged record (name, metadata, size) and the receiver hard-links the
//     base's file into the new tree. ctime cannot be set by users: anything
//     done to a file after that instant (data, mode, owner, xattrs, a rename, a
//     link) moves it, and the file is sent in full. Directories, symlinks,
//     special files and multiply-linked files always are. The new tree is built
//     in staging and exchanged with the base at once (RENAME_EXCHANGE).
//   - Images: the client sends the SHA-256 of each DeltaChunk-byte chunk of
//     the base; the server hashes the source's chunks and sends only those that
//     differ (a chunk that is all zero as an fZero range, which the receiver
//     punches as a hole). The base is patched in place: an interrupted patch
//     redone later converges, since the hashes are taken again.
//
// A delta request is never resumed: an interrupted attempt starts over.
const (
	// DeltaChunk is the chunk an image delta compares.
	DeltaChunk    = 4 << 20
	minDeltaChunk = 64 << 10
	maxDeltaChunk = 256 << 20
	hashSize      = sha256.Size
	// ctimeMargin covers the granularity of ctime (a coarse kernel clock tick)
	// against the server's clock reading.
	ctimeMargin = time.Second
)

// ErrNotBase: the base of a delta pull is not a copy of the source (a file
// the server says is unchanged is missing or not of its size): the caller
// falls back to a full pull.
var ErrNotBase = errors.New("base is not a copy of the source")

// deltaChunk is the chunk size for an image base of size bytes: DeltaChunk,
// doubled until the hashes fit in a request frame.
func deltaChunk(size int64) int64 {
	c := int64(DeltaChunk)
	for (size+c-1)/c*hashSize > maxFrame/2 && c < maxDeltaChunk {
		c *= 2
	}
	return c
}

// zeroHash returns the SHA-256 of n zero bytes (cached for the full chunk).
type zeroHasher struct {
	n   int64
	sum [hashSize]byte
	buf []byte
}

func (z *zeroHasher) of(n int64) [hashSize]byte {
	if n == z.n && z.n != 0 {
		return z.sum
	}
	h := sha256.New()
	if z.buf == nil {
		z.buf = make([]byte, 1<<20)
	}
	for left := n; left > 0; {
		k := min(left, int64(len(z.buf)))
		h.Write(z.buf[:k])
		left -= k
	}
	var s [hashSize]byte
	h.Sum(s[:0])
	if z.n == 0 {
		z.n, z.sum = n, s
	}
	return s
}

// chunkReader reads the chunks of an image file fd of size bytes: each is data
// (its bytes in buf) or all zero (a hole, or data that is all zero).
type chunkReader struct {
	fd    int
	size  int64
	chunk int64
	buf   []byte
	zero  zeroHasher
	// the data extent known at or after the last chunk asked for
	data, hole int64
}

func newChunkReader(fd int, size, chunk int64) *chunkReader {
	return &chunkReader{fd: fd, size: size, chunk: chunk, buf: make([]byte, chunk), data: -1}
}

// read returns chunk i's length, whether it is all zero, and its hash.
func (c *chunkReader) read(i int64) (n int64, zero bool, sum [hashSize]byte, err error) {
	off := i * c.chunk
	n = min(c.chunk, c.size-off)
	if c.data < 0 || off >= c.hole {
		if c.data, c.hole, err = clone.NextData(c.fd, off, c.size); err != nil {
			return 0, false, sum, err
		}
	}
	if c.data >= off+n {
		return n, true, c.zero.of(n), nil // a hole throughout
	}
	p := c.buf[:n]
	for got := int64(0); got < n; {
		k, err := unix.Pread(c.fd, p[got:], off+got)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, false, sum, fmt.Errorf("read: %w", err)
		}
		if k == 0 { // shrank under us: zeros, as a local copy would read
			clear(p[got:])
			break
		}
		got += int64(k)
	}
	if clone.AllZero(p) {
		return n, true, c.zero.of(n), nil
	}
	return n, false, sha256.Sum256(p), nil
}

// hashImage returns the chunk hashes of the image file at path (opened without
// following a symlink; it must be a regular file).
func hashImage(path string, chunk int64) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open base %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("base %s is not a regular file: %w", path, ErrNotBase)
	}
	cr := newChunkReader(fd, st.Size, chunk)
	n := (st.Size + chunk - 1) / chunk
	out := make([]byte, 0, n*hashSize)
	for i := range n {
		_, _, sum, err := cr.read(i)
		if err != nil {
			return nil, fmt.Errorf("base %s: %w", path, err)
		}
		out = append(out, sum[:]...)
	}
	return out, nil
}

// sendDelta sends the image as one file record whose data frames are the
// chunks that differ from the client's, and fZero frames for those that are
// all zero in the source (and not in the client's copy).
func (is *imageStream) sendDelta(s *sender) error {
	m := clone.MetaOf(&is.st)
	xs, err := clone.ReadXattrs(is.rfd, false)
	if err != nil {
		return err
	}
	m.Xattrs = xs
	e := s.e.reset()
	e.str("")
	encodeMeta(e, &m)
	e.i(is.st.Size)
	e.ver(versionOf(&is.st))
	e.i(0)
	if err := s.fw.frame(fFile, e.b); err != nil {
		return err
	}
	cr := newChunkReader(is.rfd, is.st.Size, is.chunk)
	var skipped int64
	for i := int64(0); i*is.chunk < is.st.Size; i++ {
		if err := s.ctx.Err(); err != nil {
			return err
		}
		n, zero, sum, err := cr.read(i)
		if err != nil {
			return err
		}
		off := i * is.chunk
		if (i+1)*hashSize <= int64(len(is.hashes)) && bytes.Equal(sum[:], is.hashes[i*hashSize:(i+1)*hashSize]) {
			s.prog.Skipped.Add(n)
			skipped += n
			continue
		}
		if zero {
			if err := s.zero(off, n); err != nil {
				return err
			}
			continue
		}
		if err := s.patch(off, cr.buf[:n]); err != nil {
			return err
		}
	}
	s.prog.Entries.Add(1)
	// The end of a delta image says what was skipped (the client cannot tell
	// an equal chunk from one the server has not reached).
	e = s.e.reset()
	e.i(skipped)
	return s.fw.frame(fFileEnd, e.b)
}

// zeroBlock is the granularity at which a chunk that differs is sent: its
// blocks that are all zero go as zero ranges (holes on the client), the others
// as data.
const zeroBlock = 4096

// patch sends chunk p, at off, as runs of data and zero ranges.
func (s *sender) patch(off int64, p []byte) error {
	for pos := 0; pos < len(p); {
		end := min(pos+zeroBlock, len(p))
		zero := clone.AllZero(p[pos:end])
		for end < len(p) && end-pos < dataChunk {
			next := min(end+zeroBlock, len(p))
			if clone.AllZero(p[end:next]) != zero {
				break
			}
			end = next
		}
		if zero {
			if err := s.zero(off+int64(pos), int64(end-pos)); err != nil {
				return err
			}
		} else {
			if err := s.fw.data(off+int64(pos), p[pos:end]); err != nil {
				return err
			}
			s.prog.Bytes.Add(int64(end - pos))
		}
		pos = end
	}
	return nil
}

func (s *sender) zero(off, n int64) error {
	e := s.e.reset()
	e.i(off)
	e.i(n)
	return s.fw.frame(fZero, e.b)
}

// unchanged sends a regular file the client's base holds as it is.
func (t *treeStream) unchanged(pfd int, st *unix.Stat_t, name string) error {
	m := clone.MetaOf(st)
	var err error
	if m.Xattrs, err = clone.ReadXattrs(pfd, true); err != nil && err != unix.ENOENT {
		return err
	}
	e := t.s.e.reset()
	e.str(name)
	encodeMeta(e, &m)
	e.i(st.Size)
	t.sent = true
	t.s.prog.Entries.Add(1)
	t.s.prog.Skipped.Add(st.Size)
	return t.s.fw.frame(fUnchanged, e.b)
}

// zero applies an fZero frame: the range becomes a hole (zeros where the
// filesystem cannot punch one).
func (r *receiver) zero(p []byte) error {
	f := r.file
	if f == nil || r.kind != KindImage || !r.delta {
		return errFrame("zero range outside a delta image")
	}
	d := &dec{b: p}
	off, n := d.i(), d.i()
	if err := d.end(); err != nil {
		return err
	}
	if off < f.written || n <= 0 || off > f.size || n > f.size-off {
		return errFrame("zero range %d+%d in a file of %d bytes written up to %d", off, n, f.size, f.written)
	}
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return err
	}
	if end := min(off+n, st.Size); end > off {
		err := unix.Fallocate(f.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, end-off)
		if err == unix.EOPNOTSUPP {
			err = writeZeros(f.fd, off, end-off)
		}
		if err != nil {
			return fmt.Errorf("zero %d+%d of the image: %w", off, end-off, err)
		}
	}
	f.written = off + n
	return nil
}

func writeZeros(fd int, off, n int64) error {
	z := make([]byte, min(n, 1<<20))
	for n > 0 {
		k, err := unix.Pwrite(fd, z[:min(n, int64(len(z)))], off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		off, n = off+int64(k), n-int64(k)
	}
	return nil
}

// unchanged applies an fUnchanged record: the file of the same path in the
// base (reached by confined lookups, a regular file of the announced size) is
// linked into the new tree and given the announced metadata.
func (r *receiver) unchanged(p []byte) error {
	if err := r.settleLeftover(false); err != nil {
		return err
	}
	d := &dec{b: p}
	name := d.str(maxName)
	m := decodeMeta(d)
	size := d.i()
	if err := d.end(); err != nil {
		return err
	}
	if err := checkName(name); err != nil {
		return err
	}
	if r.base < 0 || !r.delta {
		return errFrame("unchanged file %q in a pull without a base", name)
	}
	dfd, err := r.walk.Fd()
	if err != nil {
		return err
	}
	bdir, err := r.baseDir()
	if err != nil {
		return fmt.Errorf("%w: directory %s: %w", ErrNotBase, r.walk.Path(), err)
	}
	pfd, err := safefs.OpenConfined(bdir, name, unix.O_PATH)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrNotBase, r.walk.Path(name), err)
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != size {
		return fmt.Errorf("%w: %s is not a regular file of %d bytes (mode %o, %d bytes)", ErrNotBase,
			r.walk.Path(name), size, st.Mode, st.Size)
	}
	fd, err := clone.OpenRegular(pfd, &st, func(flags int) (int, error) { return safefs.OpenConfined(bdir, name, flags) })
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrNotBase, r.walk.Path(name), err)
	}
	defer unix.Close(fd)
	if err := linkFd(pfd, dfd, name); err != nil {
		return r.made(name, err)
	}
	if _, err := clone.SetFdMeta(fd, &m); err != nil {
		return fmt.Errorf("%s: %w", r.walk.Path(name), err)
	}
	r.st.Skipped += size
	r.o.Progress.Skipped.Add(size)
	r.applied(stepEntry, name)
	return nil
}

// linkFd links the inode of pfd (an O_PATH fd) as name in dfd: AT_EMPTY_PATH
// (CAP_DAC_READ_SEARCH, which the plugin has), else through its /proc link.
func linkFd(pfd, dfd int, name string) error {
	err := unix.Linkat(pfd, "", dfd, name, unix.AT_EMPTY_PATH)
	if err == unix.ENOENT || err == unix.EPERM {
		err = unix.Linkat(unix.AT_FDCWD, safefs.ProcPath(pfd), dfd, name, unix.AT_SYMLINK_FOLLOW)
	}
	return err
}

// baseDir opens (or reuses) the base's directory at the walk's level.
func (r *receiver) baseDir() (int, error) {
	key := pathKey(r.cur)
	if r.baseFd >= 0 && r.baseKey == key {
		return r.baseFd, nil
	}
	if r.baseFd >= 0 {
		unix.Close(r.baseFd)
		r.baseFd = -1
	}
	fd, err := safefs.OpenDirChain(r.base, r.cur, unix.O_PATH)
	if err != nil {
		return -1, err
	}
	r.baseFd, r.baseKey = fd, key
	return fd, nil
}

func pathKey(names []string) string {
	var b []byte
	for _, n := range names {
		b = binary.AppendUvarint(b, uint64(len(n)))
		b = append(b, n...)
	}
	return string(b)
}
