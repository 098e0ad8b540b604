package transfer

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/berth-csi/berth/pkg/storage/clone"
	"golang.org/x/sys/unix"
)

// The wire format: after the TLS handshake the client sends one request frame;
// the server answers with a header frame, then the records of the source in walk
// order, then an end frame, or an error frame at any point. A frame is a type
// byte, a payload length (4 bytes, big-endian) and the payload; integers inside
// payloads are varints, strings and byte strings a length then the bytes.
const (
	// protocolVersion 2 adds delta pulls (request.Delta, header.ServerTime and
	// header.Delta, fUnchanged and fZero); a server still answers version 1
	// requests as version 1.
	protocolVersion = 2
	frameHeader     = 5
	// maxFrame bounds any payload a peer may send: a resume position of a very
	// deep tree is the largest.
	maxFrame = 16 << 20
	// dataChunk is the most data one data frame carries: what an interrupted
	// file loses at most.
	dataChunk = 512 << 10
	// maxName is the longest entry name (NAME_MAX); maxTarget the longest
	// symlink target (PATH_MAX less its NUL).
	maxName   = 255
	maxTarget = 4095
	// maxXattrs bounds the extended attributes of one entry.
	maxXattrs = 1024
)

type frameType uint8

const (
	fRequest frameType = iota + 1
	fHeader
	fEnter     // a directory: made and entered
	fLeave     // the current directory is complete: its metadata, then up
	fFile      // a regular file: its data frames and fFileEnd follow
	fData      // offset, then data of the current file
	fFileEnd   // the current file is complete
	fLink      // a hard link to a regular file sent before
	fSymlink   // a symlink, its target never resolved
	fSpecial   // a device node or fifo
	fEnd       // the source is complete
	fError     // the server stops: a code and a message
	fKeepalive // nothing: the server is busy skipping what the client has
	fUnchanged // delta trees: a regular file the client's base holds as it is
	fZero      // delta images: offset and length of a range that is all zero
)

func (t frameType) String() string {
	names := [...]string{"?", "request", "header", "enter", "leave", "file", "data", "file-end", "link",
		"symlink", "special", "end", "error", "keepalive", "unchanged", "zero"}
	if int(t) < len(names) {
		return names[t]
	}
	return fmt.Sprintf("frame(%d)", uint8(t))
}

// errFrame wraps every malformed frame: a peer that sends one is not a Berth
// peer speaking this protocol, or a hostile one.
func errFrame(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

// frameWriter writes frames to a buffered stream.
type frameWriter struct {
	w   *bufio.Writer
	enc enc
}

func newFrameWriter(w io.Writer) *frameWriter {
	return &frameWriter{w: bufio.NewWriterSize(w, 256<<10)}
}

// frame writes one frame whose payload is e's content.
func (fw *frameWriter) frame(t frameType, payload []byte) error {
	if len(payload) > maxFrame {
		return fmt.Errorf("%s frame of %d bytes: %w", t, len(payload), unix.E2BIG)
	}
	var h [frameHeader]byte
	h[0] = byte(t)
	binary.BigEndian.PutUint32(h[1:], uint32(len(payload)))
	if _, err := fw.w.Write(h[:]); err != nil {
		return err
	}
	_, err := fw.w.Write(payload)
	return err
}

// data writes a data frame: off, then p, without copying p into a payload.
func (fw *frameWriter) data(off int64, p []byte) error {
	var h [frameHeader + 8]byte
	h[0] = byte(fData)
	binary.BigEndian.PutUint32(h[1:], uint32(8+len(p)))
	binary.BigEndian.PutUint64(h[frameHeader:], uint64(off))
	if _, err := fw.w.Write(h[:]); err != nil {
		return err
	}
	_, err := fw.w.Write(p)
	return err
}

func (fw *frameWriter) flush() error { return fw.w.Flush() }

// frameReader reads frames; a payload stays valid until the next call.
type frameReader struct {
	r   *bufio.Reader
	buf []byte
}

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{r: bufio.NewReaderSize(r, 256<<10)}
}

// next reads a frame. A connection that ends between frames is io.EOF, within
// one io.ErrUnexpectedEOF.
func (fr *frameReader) next() (frameType, []byte, error) {
	var h [frameHeader]byte
	if _, err := io.ReadFull(fr.r, h[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(h[1:])
	if n > maxFrame {
		return 0, nil, errFrame("%s frame of %d bytes, more than %d", frameType(h[0]), n, maxFrame)
	}
	if cap(fr.buf) < int(n) {
		fr.buf = make([]byte, n)
	}
	p := fr.buf[:n]
	if _, err := io.ReadFull(fr.r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return frameType(h[0]), p, nil
}

// enc appends varints and length-prefixed strings.
type enc struct{ b []byte }

func (e *enc) reset() *enc        { e.b = e.b[:0]; return e }
func (e *enc) u(v uint64)         { e.b = binary.AppendUvarint(e.b, v) }
func (e *enc) i(v int64)          { e.b = binary.AppendVarint(e.b, v) }
func (e *enc) str(s string)       { e.u(uint64(len(s))); e.b = append(e.b, s...) }
func (e *enc) bytes(p []byte)     { e.u(uint64(len(p))); e.b = append(e.b, p...) }
func (e *enc) ts(t unix.Timespec) { e.i(t.Sec); e.i(t.Nsec) }
func (e *enc) ver(v fileVersion)  { e.u(v.Ino); e.i(v.Size); e.i(v.Mtime); e.i(v.Ctime) }

func (e *enc) flag(b bool) {
	if b {
		e.u(1)
	} else {
		e.u(0)
	}
}

func (e *enc) strs(ss []string) {
	e.u(uint64(len(ss)))
	for _, s := range ss {
		e.str(s)
	}
}

// dec reads what enc wrote. The first error sticks; every length is checked
// against what is left, so no input can make it allocate more than it holds.
type dec struct {
	b   []byte
	err error
}

func (d *dec) fail(what string) {
	if d.err == nil {
		d.err = errFrame("bad %s", what)
	}
}

func (d *dec) u() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("integer")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) i() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("integer")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// bytes returns a slice of the payload (not a copy).
func (d *dec) bytes(max int) []byte {
	n := d.u()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) || n > uint64(max) {
		d.fail("length")
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *dec) str(max int) string { return string(d.bytes(max)) }
func (d *dec) flag() bool         { return d.u() == 1 }

// count reads a count of items each at least 1 byte long.
func (d *dec) count(max int) int {
	n := d.u()
	if n > uint64(max) || n > uint64(len(d.b)) {
		d.fail("count")
		return 0
	}
	return int(n)
}

func (d *dec) strs(maxN, maxLen int) []string {
	n := d.count(maxN)
	out := make([]string, 0, min(n, 64)) // grown as they come: no input allocates ahead of itself
	for range n {
		out = append(out, d.str(maxLen))
	}
	return out
}

func (d *dec) ts() unix.Timespec {
	sec, nsec := d.i(), d.i()
	if nsec < 0 || nsec >= 1e9 {
		d.fail("time")
	}
	return unix.Timespec{Sec: sec, Nsec: nsec}
}

func (d *dec) ver() fileVersion {
	return fileVersion{Ino: d.u(), Size: d.i(), Mtime: d.i(), Ctime: d.i()}
}

// end reports the first error, or trailing bytes.
func (d *dec) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("frame: trailing bytes")
	}
	return d.err
}

// fileVersion identifies the content of a source file (or image): a resumed
// transfer continues a partial copy only when the source still has the same one.
type fileVersion struct {
	Ino   uint64 `json:"ino"`
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime"` // nanoseconds (wrapping past 2262: an identity, not a date)
	Ctime int64  `json:"ctime"`
}

func versionOf(st *unix.Stat_t) fileVersion {
	return fileVersion{Ino: st.Ino, Size: st.Size, Mtime: st.Mtim.Sec*1e9 + st.Mtim.Nsec, Ctime: st.Ctim.Sec*1e9 + st.Ctim.Nsec}
}

// Steps of a resume position: what the last record the client applied did.
const (
	stepEnter uint8 = iota // entered the directory Path (nothing inside it yet)
	stepLeave              // completed the directory Path
	stepEntry              // completed the non-directory entry Path
)

// request is the client's one frame.
type request struct {
	Version uint64
	ID      string
	// RateLimit asks the server to send at most this many bytes a second (0: the
	// server's own limit only).
	RateLimit int64
	// Resume, when Started: the staging copy came from the source of Generation
	// and Kind and holds everything up to and including Path/Step, and Partial
	// (a file after it, or the image) up to Partial.Offset.
	Started    bool
	Generation string
	Kind       Kind
	Path       []string
	Step       uint8
	Partial    partial
	// Delta (version 2): the client holds a complete copy of the source of
	// Generation made by a Pull whose server began reading at Since (the
	// server's clock, Unix nanoseconds). A tree is sent with fUnchanged records
	// for the regular files not changed since; an image only where its chunks
	// (Chunk bytes each) differ from Hashes, the SHA-256 of the client's
	// chunks in order. A delta request is never a resume.
	Delta  bool
	Since  int64
	Chunk  int64
	Hashes []byte
}

// partial is a regular file (or the image, with no name) copied up to Offset.
type partial struct {
	Name    string
	Offset  int64
	Version fileVersion
}

const maxPath = maxFrame / 2 // components of a resume position (each 1+ bytes)

func (r *request) encode(e *enc) []byte {
	e.reset()
	e.u(r.Version)
	e.str(r.ID)
	e.i(r.RateLimit)
	e.flag(r.Started)
	e.str(r.Generation)
	e.u(uint64(r.Kind))
	e.strs(r.Path)
	e.u(uint64(r.Step))
	e.str(r.Partial.Name)
	e.i(r.Partial.Offset)
	e.ver(r.Partial.Version)
	if r.Version >= 2 {
		e.flag(r.Delta)
		e.i(r.Since)
		e.i(r.Chunk)
		e.bytes(r.Hashes)
	}
	return e.b
}

func decodeRequest(p []byte) (*request, error) {
	d := &dec{b: p}
	r := &request{Version: d.u()}
	if d.err == nil && (r.Version < 1 || r.Version > protocolVersion) {
		return r, fmt.Errorf("%w: protocol version %d, this server speaks 1 to %d", ErrProtocol, r.Version, protocolVersion)
	}
	r.ID = d.str(maxName)
	r.RateLimit = d.i()
	r.Started = d.flag()
	r.Generation = d.str(1024)
	r.Kind = Kind(d.u())
	r.Path = d.strs(maxPath, maxName)
	r.Step = uint8(d.u())
	r.Partial = partial{Name: d.str(maxName), Offset: d.i(), Version: d.ver()}
	if r.Version >= 2 {
		r.Delta, r.Since, r.Chunk = d.flag(), d.i(), d.i()
		r.Hashes = append([]byte(nil), d.bytes(maxFrame)...)
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	if r.Delta && (r.Started || r.Chunk < minDeltaChunk || r.Chunk > maxDeltaChunk || len(r.Hashes)%hashSize != 0) {
		return nil, errFrame("bad delta request")
	}
	if r.RateLimit < 0 || r.Step > stepEntry || r.Partial.Offset < 0 {
		return nil, errFrame("bad request")
	}
	for _, n := range r.Path {
		if err := checkName(n); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// header is the server's answer to a request.
type header struct {
	Version    uint64
	Kind       Kind
	SizeBytes  int64 // the source's capacity
	FSType     string
	AccessType string
	Generation string
	// Resumed: the server goes on from the request's position; otherwise it
	// sends everything and the client starts over.
	Resumed bool
	// Total is the data the transfer will send when known in advance (images:
	// their data extents), else 0.
	Total int64
	// ServerTime (version 2) is the server's clock, Unix nanoseconds, taken
	// before it began reading the source: what a later delta request's Since
	// says. Delta: the server honours the request's delta (same generation).
	ServerTime int64
	Delta      bool
}

func (h *header) encode(e *enc) []byte {
	e.reset()
	e.u(h.Version)
	e.u(uint64(h.Kind))
	e.i(h.SizeBytes)
	e.str(h.FSType)
	e.str(h.AccessType)
	e.str(h.Generation)
	e.flag(h.Resumed)
	e.i(h.Total)
	if h.Version >= 2 {
		e.i(h.ServerTime)
		e.flag(h.Delta)
	}
	return e.b
}

func decodeHeader(p []byte) (*header, error) {
	d := &dec{b: p}
	h := &header{Version: d.u(), Kind: Kind(d.u()), SizeBytes: d.i(), FSType: d.str(64), AccessType: d.str(64),
		Generation: d.str(1024), Resumed: d.flag(), Total: d.i()}
	if h.Version >= 2 {
		h.ServerTime, h.Delta = d.i(), d.flag()
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	if h.Version < 1 || h.Version > protocolVersion || (h.Kind != KindTree && h.Kind != KindImage) || h.SizeBytes < 0 || h.Total < 0 {
		return nil, errFrame("bad header")
	}
	return h, nil
}

func encodeMeta(e *enc, m *clone.Meta) {
	e.u(uint64(m.Mode))
	e.u(uint64(m.UID))
	e.u(uint64(m.GID))
	e.ts(m.Atime)
	e.ts(m.Mtime)
	e.u(uint64(len(m.Xattrs)))
	for _, x := range m.Xattrs {
		e.str(x.Name)
		e.bytes(x.Value)
	}
}

// decodeMeta reads metadata; xattr values are copies (the payload is reused).
func decodeMeta(d *dec) clone.Meta {
	m := clone.Meta{Mode: uint32(d.u()), UID: uint32(d.u()), GID: uint32(d.u()), Atime: d.ts(), Mtime: d.ts()}
	n := d.count(maxXattrs)
	for range n {
		name := d.str(maxName)
		if d.err == nil && (name == "" || containsNUL(name)) {
			d.fail("xattr name")
		}
		m.Xattrs = append(m.Xattrs, clone.Xattr{Name: name, Value: append([]byte{}, d.bytes(1<<16)...)})
	}
	if m.Mode&^0o7777 != 0 || m.UID == math.MaxUint32 || m.GID == math.MaxUint32 {
		d.fail("metadata")
	}
	return m
}

func containsNUL(s string) bool {
	for i := range len(s) {
		if s[i] == 0 {
			return true
		}
	}
	return false
}

// Error codes of an error frame, and the sentinels they stand for.
const (
	codeInternal uint64 = iota + 1
	codeNotFound
	codeRefused
	codeBusy
	codeInvalid
	codeChanged
)

func encodeError(e *enc, err error) []byte {
	code := codeInternal
	switch {
	case errors.Is(err, ErrNotFound):
		code = codeNotFound
	case errors.Is(err, ErrRefused):
		code = codeRefused
	case errors.Is(err, ErrBusy):
		code = codeBusy
	case errors.Is(err, ErrProtocol):
		code = codeInvalid
	case errors.Is(err, errSourceChanged):
		code = codeChanged
	}
	msg := err.Error()
	if len(msg) > 4096 {
		msg = msg[:4096]
	}
	e.reset()
	e.u(code)
	e.str(msg)
	return e.b
}

// decodeError turns an error frame into an error wrapping the code's sentinel.
func decodeError(p []byte) error {
	d := &dec{b: p}
	code, msg := d.u(), d.str(4096)
	if err := d.end(); err != nil {
		return err
	}
	sentinel := map[uint64]error{codeNotFound: ErrNotFound, codeRefused: ErrRefused, codeBusy: ErrBusy,
		codeInvalid: ErrProtocol, codeChanged: errSourceChanged}[code]
	if sentinel == nil {
		sentinel = ErrServer
	}
	return fmt.Errorf("%w: the server says: %s", sentinel, msg)
}

// checkName refuses anything but one plain path component.
func checkName(name string) error {
	if len(name) > maxName || name == "" || name == "." || name == ".." {
		return errFrame("entry name %q", name)
	}
	for i := range len(name) {
		if name[i] == '/' || name[i] == 0 {
			return errFrame("entry name %q", name)
		}
	}
	return nil
}
