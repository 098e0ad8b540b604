package extents

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
)

// Range is a byte range of a file: Length bytes from Offset.
type Range struct{ Offset, Length int64 }

// End is the offset just past the range.
func (r Range) End() int64 { return r.Offset + r.Length }

// Stats tells what a listing found and what it cost; the engine logs it.
type Stats struct {
	// Calls counts FIEMAP calls, Extents the extents they returned (both files).
	Calls, Extents int
	// SharedBytes: data at the same physical blocks in both files, unchanged.
	SharedBytes int64
	// ZeroBytes: a hole or an unwritten extent in both files, unchanged.
	ZeroBytes int64
	// WrittenBytes: data in one file only, or at different blocks in each:
	// reported without reading it (it may hold what the base held, see Changed).
	WrittenBytes int64
	// ComparedBytes: shared-looking data whose address cannot be trusted
	// (compressed, inline...), read in both files and compared.
	ComparedBytes int64
	// ReportedBytes is the size of every range reported, rounded to blocks.
	ReportedBytes int64
}

// checkEvery is how many extents pass between two looks at the context.
const checkEvery = 256

// Allocated reports, in ascending order, the ranges of f between start and size
// that hold written data: every extent but unwritten (preallocated) ones, which
// read as zeros. A range may begin before start (at its block's start) but always
// ends after it.
func Allocated(ctx context.Context, f *os.File, start, size int64, emit func(Range) error) (Stats, error) {
	m := newMapper(int(f.Fd()), alignDown(start), size)
	st, err := allocated(ctx, m, start, size, emit)
	st.Calls = m.calls
	return st, err
}

func allocated(ctx context.Context, src source, start, size int64, emit func(Range) error) (Stats, error) {
	var st Stats
	out := emitter{size: size, emit: emit, stats: &st}
	for {
		if st.Extents%checkEvery == 0 {
			if err := ctx.Err(); err != nil {
				return st, err
			}
		}
		e, ok, err := src.next()
		if err != nil {
			return st, err
		}
		if !ok || e.Logical >= size {
			break
		}
		st.Extents++
		if e.zero() {
			continue
		}
		if a, b := max(e.Logical, alignDown(start)), min(e.end(), size); a < b {
			if err := out.add(a, b); err != nil {
				return st, err
			}
		}
	}
	return st, out.flush()
}

// Changed reports, in ascending order, the ranges between start and size where
// target may differ from base, two images of which one was copied from the other
// by reflink (directly or along a chain of copies). It reads the extent maps of
// both and never their data, but where they cannot tell:
//
//   - data at the same physical blocks in both is unchanged: a block shared by
//     reflink is never written in place (copy-on-write);
//   - a hole or an unwritten extent in both reads as zeros in both: unchanged;
//   - anything else is reported: data in one and a hole in the other (written
//     since, or punched out), or data at different blocks (rewritten). Such a
//     block may hold the same bytes as before (zeros written into a hole, a
//     rewrite of the same data); it is reported all the same, as a block store
//     reports the blocks written since a snapshot: finding out would cost
//     reading both images there, more than the caller's reading the target's
//     block once.
//   - data in extents whose address does not name the bytes at each offset
//     (compressed, inline, not aligned, not yet allocated) is read in both
//     files and compared block by block where both report the same address (the
//     same encoded extent), and reported where they do not.
//
// Past base's end base reads as zeros (a volume expanded between the two).
func Changed(ctx context.Context, base, target *os.File, start, size int64, emit func(Range) error) (Stats, error) {
	mb, mt := newMapper(int(base.Fd()), alignDown(start), size), newMapper(int(target.Fd()), alignDown(start), size)
	st, err := changed(ctx, mb, mt, base, target, start, size, emit)
	st.Calls = mb.calls + mt.calls
	return st, err
}

func changed(ctx context.Context, base, target source, rb, rt io.ReaderAt, start, size int64, emit func(Range) error) (Stats, error) {
	var st Stats
	out := emitter{size: size, emit: emit, stats: &st}
	cb, ct := cursor{src: base, stats: &st}, cursor{src: target, stats: &st}
	var buf []byte
	for pos, i := alignDown(start), 0; pos < size; i++ {
		if i%checkEvery == 0 {
			if err := ctx.Err(); err != nil {
				return st, err
			}
		}
		eb, inB, endB, err := cb.at(pos)
		if err != nil {
			return st, fmt.Errorf("base: %w", err)
		}
		et, inT, endT, err := ct.at(pos)
		if err != nil {
			return st, fmt.Errorf("target: %w", err)
		}
		end := min(endB, endT, size)
		dataB, dataT := inB && !eb.zero(), inT && !et.zero()
		switch {
		case !dataB && !dataT:
			st.ZeroBytes += end - pos
		case dataB && dataT && !eb.opaque() && !et.opaque() && eb.Physical+(pos-eb.Logical) == et.Physical+(pos-et.Logical):
			st.SharedBytes += end - pos
		case dataB && dataT && (eb.opaque() || et.opaque()) && eb.Physical == et.Physical:
			// One encoded (compressed), inline or not yet placed extent: its address
			// names the whole extent, not the bytes at pos (btrfs gives a compressed
			// extent's start for every part of a file that refers into it), so the
			// same address says only that the bytes may be the same.
			if buf == nil {
				buf = make([]byte, 2*compareChunk)
			}
			if err := compare(ctx, rb, rt, pos, end, buf, &out); err != nil {
				return st, err
			}
			st.ComparedBytes += end - pos
		default:
			st.WrittenBytes += end - pos
			if err := out.add(pos, end); err != nil {
				return st, err
			}
		}
		pos = end
	}
	return st, out.flush()
}

// compareChunk is how much of each file compare reads at once.
const compareChunk = 1 << 20

// compare reads [pos, end) of both files and reports the blocks that differ.
func compare(ctx context.Context, rb, rt io.ReaderAt, pos, end int64, buf []byte, out *emitter) error {
	b, t := buf[:compareChunk], buf[compareChunk:]
	for off := alignDown(pos); off < end; off += compareChunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := int(min(compareChunk, end-off))
		if err := readFull(rb, b[:n], off); err != nil {
			return fmt.Errorf("base: %w", err)
		}
		if err := readFull(rt, t[:n], off); err != nil {
			return fmt.Errorf("target: %w", err)
		}
		for i := 0; i < n; i += BlockSize {
			j := min(i+BlockSize, n)
			if !bytes.Equal(b[i:j], t[i:j]) {
				if err := out.add(off+int64(i), off+int64(j)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// readFull fills p from off; what lies past the end of the file reads as zeros.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if errors.Is(err, io.EOF) {
		clear(p[n:])
		return nil
	}
	return err
}

// cursor walks one file's extents for changed: at tells what lies at pos.
type cursor struct {
	src   source
	cur   Extent
	ok    bool // cur holds an extent not yet passed
	eof   bool
	stats *Stats
}

// at returns the extent covering pos (in true) or the hole there (in false),
// and where that extent or hole ends. Calls come with pos ascending.
func (c *cursor) at(pos int64) (e Extent, in bool, end int64, err error) {
	for !c.eof && (!c.ok || c.cur.end() <= pos) {
		e, ok, err := c.src.next()
		if err != nil {
			return Extent{}, false, 0, err
		}
		c.cur, c.ok, c.eof = e, ok, !ok
		if ok {
			c.stats.Extents++
		}
	}
	switch {
	case !c.ok:
		return Extent{}, false, math.MaxInt64, nil
	case c.cur.Logical <= pos:
		return c.cur, true, c.cur.end(), nil
	default:
		return Extent{}, false, c.cur.Logical, nil
	}
}

// emitter rounds ranges out to whole blocks (not past size), merges those that
// touch or overlap, and hands each merged range to emit once it is complete.
type emitter struct {
	size  int64
	cur   Range
	has   bool
	emit  func(Range) error
	stats *Stats
}

// add takes [off, end); calls come in ascending order.
func (o *emitter) add(off, end int64) error {
	a, b := alignDown(off), min(alignUp(end), o.size)
	if o.has && a <= o.cur.End() {
		o.cur.Length = max(o.cur.End(), b) - o.cur.Offset
		return nil
	}
	if err := o.flush(); err != nil {
		return err
	}
	o.cur, o.has = Range{Offset: a, Length: b - a}, true
	return nil
}

func (o *emitter) flush() error {
	if !o.has {
		return nil
	}
	o.has = false
	o.stats.ReportedBytes += o.cur.Length
	return o.emit(o.cur)
}

func alignDown(n int64) int64 { return n / BlockSize * BlockSize }

func alignUp(n int64) int64 { return (n + BlockSize - 1) / BlockSize * BlockSize }
