package transfer

import (
	"context"
	"fmt"

	"github.com/berth-csi/berth/pkg/storage/clone"
	"golang.org/x/sys/unix"
)

// stream is one source being sent: prepare fills in what the header says of it
// (whether the request's resume position is honoured, the total when known),
// send writes its records.
type stream interface {
	prepare(h *header)
	send(s *sender) error
	close()
}

// sender writes the records of one transfer.
type sender struct {
	ctx  context.Context
	fw   *frameWriter
	prog *Progress
	buf  []byte // dataChunk bytes
	e    enc
}

// file sends a regular file's record, the data of rfd (size bytes, holes left
// out) from offset on, and its end. A source that shrinks meanwhile ends its data
// early: the receiver's copy reads zeros there, as a local copy's would.
func (s *sender) file(name string, m *clone.Meta, rfd int, size int64, v fileVersion, offset int64) error {
	e := s.e.reset()
	e.str(name)
	encodeMeta(e, m)
	e.i(size)
	e.ver(v)
	e.i(offset)
	if err := s.fw.frame(fFile, e.b); err != nil {
		return err
	}
	s.prog.Resumed.Add(offset)
	for off := offset; off < size; {
		data, hole, err := clone.NextData(rfd, off, size)
		if err != nil {
			return err
		}
		if data >= size {
			break
		}
		for pos := data; pos < hole; {
			if err := s.ctx.Err(); err != nil {
				return err
			}
			n, err := unix.Pread(rfd, s.buf[:min(hole-pos, dataChunk)], pos)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return fmt.Errorf("read: %w", err)
			}
			if n == 0 {
				hole = pos // shrank under us
				break
			}
			if err := s.fw.data(pos, s.buf[:n]); err != nil {
				return err
			}
			pos += int64(n)
			s.prog.Bytes.Add(int64(n))
		}
		off = max(hole, data+1)
	}
	s.prog.Entries.Add(1)
	return s.fw.frame(fFileEnd, nil)
}

// imageStream sends an image file as one file record without a name.
type imageStream struct {
	rfd    int
	st     unix.Stat_t
	offset int64 // where the data resumes
	total  int64
	// delta: send only the chunks whose hashes differ from the client's.
	delta  bool
	chunk  int64
	hashes []byte
}

// openImage opens the image at src.Path (its path is the engine's, trusted; the
// file itself is checked to be a regular file and opened without following a
// symlink) and decides from req where to resume.
func openImage(src *Source, req *request) (stream, error) {
	pfd, err := unix.Open(src.Path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open image %s: %w", src.Path, err)
	}
	defer unix.Close(pfd)
	is := &imageStream{}
	if err := unix.Fstat(pfd, &is.st); err != nil {
		return nil, err
	}
	if is.st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("image %s: %w", src.Path, clone.ErrNotRegular)
	}
	is.rfd, err = clone.OpenRegular(pfd, &is.st, func(flags int) (int, error) {
		return unix.Open(src.Path, flags|unix.O_NOFOLLOW, 0)
	})
	if err != nil {
		return nil, fmt.Errorf("open image %s: %w", src.Path, err)
	}
	if req.Started && req.Kind == KindImage && req.Generation == src.Generation && req.Partial.Name == "" &&
		req.Partial.Version == versionOf(&is.st) && req.Partial.Offset <= is.st.Size {
		is.offset = req.Partial.Offset
	}
	if req.Delta && req.Kind == KindImage && req.Generation == src.Generation {
		is.delta, is.chunk, is.hashes = true, req.Chunk, req.Hashes
		return is, nil // what is sent is known only as it goes
	}
	for off := int64(0); off < is.st.Size; {
		data, hole, err := clone.NextData(is.rfd, off, is.st.Size)
		if err != nil {
			unix.Close(is.rfd)
			return nil, err
		}
		if data >= is.st.Size {
			break
		}
		is.total += hole - data
		off = hole
	}
	return is, nil
}

func (is *imageStream) prepare(h *header) {
	h.Resumed = is.offset > 0
	h.Total = is.total
	h.Delta = is.delta
}

func (is *imageStream) send(s *sender) error {
	if is.delta {
		return is.sendDelta(s)
	}
	m := clone.MetaOf(&is.st)
	xs, err := clone.ReadXattrs(is.rfd, false)
	if err != nil {
		return err
	}
	m.Xattrs = xs
	return s.file("", &m, is.rfd, is.st.Size, versionOf(&is.st), is.offset)
}

func (is *imageStream) close() { unix.Close(is.rfd) }
