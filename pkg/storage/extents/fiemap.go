// Package extents answers which ranges of an image file hold data, and which
// ranges differ between two images that share extents by reflink, from the
// files' extent maps (FS_IOC_FIEMAP). It serves changed-block tracking: the CSI
// SnapshotMetadata service of snapshots of image volumes.
//
// Ranges are reported in whole blocks of BlockSize (4 KiB, the image
// granularity), at aligned offsets, adjacent blocks merged into one range.
package extents

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BlockSize is the granularity of every reported range.
const BlockSize = 4096

// fsIocFiemap is FS_IOC_FIEMAP, _IOWR('f', 11, struct fiemap) with the
// generic ioctl encoding (amd64, arm64): golang.org/x/sys/unix does not define it.
const fsIocFiemap = 0xC020660B

// fiemap flags (linux/fiemap.h).
const (
	flagSync = 0x1 // FIEMAP_FLAG_SYNC: write dirty data back before mapping

	extLast      = 0x1    // FIEMAP_EXTENT_LAST
	extUnknown   = 0x2    // FIEMAP_EXTENT_UNKNOWN: location not known yet
	extDelalloc  = 0x4    // FIEMAP_EXTENT_DELALLOC: not allocated yet
	extEncoded   = 0x8    // FIEMAP_EXTENT_ENCODED: compressed, physical names the whole encoded extent
	extEncrypted = 0x80   // FIEMAP_EXTENT_DATA_ENCRYPTED
	extUnaligned = 0x100  // FIEMAP_EXTENT_NOT_ALIGNED
	extInline    = 0x200  // FIEMAP_EXTENT_DATA_INLINE: data in the metadata block
	extTail      = 0x400  // FIEMAP_EXTENT_DATA_TAIL: packed with other files' tails
	extUnwritten = 0x800  // FIEMAP_EXTENT_UNWRITTEN: allocated, reads as zeros
	extShared    = 0x2000 // FIEMAP_EXTENT_SHARED
)

// opaqueFlags mark extents whose physical address does not name their data
// alone: two files showing the same address there may still differ.
const opaqueFlags = extUnknown | extDelalloc | extEncoded | extEncrypted | extUnaligned | extInline | extTail

const (
	headerSize = 32 // struct fiemap
	extentSize = 56 // struct fiemap_extent
	// batch is how many extents one FIEMAP call returns at most (28 KiB).
	batch = 512
)

// Extent is one mapped range of a file.
type Extent struct {
	Logical, Physical, Length int64
	Flags                     uint32
}

func (e Extent) end() int64 { return e.Logical + e.Length }

// zero reports an extent that reads as zeros (preallocated, never written).
func (e Extent) zero() bool { return e.Flags&extUnwritten != 0 }

// opaque reports an extent whose physical address cannot be compared.
func (e Extent) opaque() bool { return e.Flags&opaqueFlags != 0 }

// source yields a file's extents in ascending logical order, without overlap.
type source interface {
	next() (Extent, bool, error)
}

// mapper lists the extents of fd overlapping [pos, end) with FIEMAP, a batch per
// call, the first with FIEMAP_FLAG_SYNC, which writes the whole file back first, so
// that no dirty page is left unmapped (a snapshot is never written, but its source
// may have been just before it was cloned).
type mapper struct {
	fd       int
	pos, end int64
	buf      []byte
	exts     []Extent
	done     bool
	calls    int
}

func newMapper(fd int, start, end int64) *mapper {
	return &mapper{fd: fd, pos: start, end: end, buf: make([]byte, headerSize+batch*extentSize)}
}

func (m *mapper) next() (Extent, bool, error) {
	for len(m.exts) == 0 {
		if m.done || m.pos >= m.end {
			return Extent{}, false, nil
		}
		if err := m.fill(); err != nil {
			return Extent{}, false, err
		}
	}
	e := m.exts[0]
	m.exts = m.exts[1:]
	return e, true, nil
}

// fill asks FIEMAP for the next batch from m.pos.
func (m *mapper) fill() error {
	clear(m.buf[:headerSize])
	ne := binary.NativeEndian
	ne.PutUint64(m.buf[0:], uint64(m.pos))
	ne.PutUint64(m.buf[8:], uint64(m.end-m.pos))
	if m.calls == 0 {
		ne.PutUint32(m.buf[16:], flagSync) // writes the whole file back: once is enough
	}
	ne.PutUint32(m.buf[24:], batch)
	m.calls++
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(m.fd), fsIocFiemap, uintptr(unsafe.Pointer(&m.buf[0])))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return fmt.Errorf("FIEMAP at %d: %w", m.pos, errno)
		}
		break
	}
	n := int(ne.Uint32(m.buf[20:]))
	if n == 0 {
		m.done = true
		return nil
	}
	if n > batch {
		return fmt.Errorf("FIEMAP at %d: %d extents mapped for %d asked", m.pos, n, batch)
	}
	m.exts = m.exts[:0]
	for i := range n {
		b := m.buf[headerSize+i*extentSize:]
		e := Extent{
			Logical:  int64(ne.Uint64(b[0:])),
			Physical: int64(ne.Uint64(b[8:])),
			Length:   int64(ne.Uint64(b[16:])),
			Flags:    ne.Uint32(b[40:]),
		}
		if e.Length <= 0 || e.end() <= m.pos && i == n-1 {
			return fmt.Errorf("FIEMAP at %d: extent %d at %d of %d bytes makes no progress", m.pos, i, e.Logical, e.Length)
		}
		m.exts = append(m.exts, e)
		if e.Flags&extLast != 0 {
			m.done = true
		}
	}
	m.pos = m.exts[len(m.exts)-1].end()
	return nil
}
