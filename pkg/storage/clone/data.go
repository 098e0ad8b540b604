package clone

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
)

const (
	// copyChunk is the most one copy step moves; the context is checked and
	// progress reported between steps, so cancellation takes effect within
	// one chunk.
	copyChunk = 8 << 20
	// bufSize is the buffer of the read/write fallback.
	bufSize = 1 << 20
)

// ErrChanged reports that an entry changed type or identity between two
// lookups; a walk classifies it again.
var ErrChanged = errors.New("entry changed during copy")

// OpenRegular opens for reading the regular file that pfd, an O_PATH fd with
// stat st, refers to, and updates st to the opened file's stat. It reopens pfd through its /proc magic link, which
// yields exactly that inode: an entry swapped for a fifo or a device node
// after pfd was checked is never opened (opening a device can have side
// effects; opening a fifo can block). Without /proc it falls back to fallback,
// a confined lookup by name with O_NONBLOCK, and refuses anything that is not
// the inode pfd was. The result is checked to be that inode either way;
// ErrChanged reports a mismatch. O_NOATIME keeps the source's access time
// where the caller may ask for it.
func OpenRegular(pfd int, st *unix.Stat_t, fallback func(flags int) (int, error)) (int, error) {
	const flags = unix.O_RDONLY | unix.O_NONBLOCK | unix.O_CLOEXEC
	open := func(f int) (int, error) {
		fd, err := unix.Open(safefs.ProcPath(pfd), f, 0)
		if err == unix.ENOENT {
			fd, err = fallback(f)
		}
		return fd, err
	}
	fd, err := open(flags | unix.O_NOATIME)
	if err == unix.EPERM {
		fd, err = open(flags)
	}
	switch err {
	case nil:
	case unix.ENOENT, unix.ELOOP, unix.ENOTDIR, unix.ENXIO, unix.EXDEV:
		return -1, ErrChanged
	default:
		return -1, err
	}
	var got unix.Stat_t
	if err := unix.Fstat(fd, &got); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if got.Mode&unix.S_IFMT != unix.S_IFREG || got.Dev != st.Dev || got.Ino != st.Ino {
		unix.Close(fd)
		return -1, ErrChanged
	}
	*st = got
	return fd, nil
}

// cloneUnsupported reports FICLONE errors that mean "these files cannot share
// extents" rather than a failure of the filesystem.
func cloneUnsupported(err error) bool {
	switch err {
	case unix.EOPNOTSUPP, unix.EXDEV, unix.EINVAL, unix.ENOTTY, unix.ENOSYS:
		return true
	}
	return false
}

// copyData gives wfd, a new empty file, the content of rfd, size bytes:
// shared with FICLONE where the options and the filesystem allow, else
// copied with its holes kept.
func (c *counter) copyData(ctx context.Context, rfd, wfd int, size int64) error {
	if c.o.Reflink != Never && !c.noClone {
		err := unix.IoctlFileClone(wfd, rfd)
		if err == nil {
			c.cloned++
			c.BytesCloned += size
			c.progress()
			return nil
		}
		if !cloneUnsupported(err) {
			return fmt.Errorf("clone: %w", err)
		}
		if c.o.Reflink == Always {
			return fmt.Errorf("clone: %w: %w", ErrNoReflink, err)
		}
		if err != unix.EINVAL {
			// Not per file (EINVAL may be: btrfs refuses some pairs): stop
			// trying for the rest of this copy.
			c.noClone = true
		}
		if err := unix.Ftruncate(wfd, 0); err != nil {
			return err
		}
	}
	c.copied++
	if err := c.copySparse(ctx, rfd, wfd, size); err != nil {
		return err
	}
	c.progress()
	return nil
}

// copySparse copies the data extents of the first size bytes of rfd to wfd
// at the same offsets, found with SEEK_DATA and SEEK_HOLE, and sets wfd's
// size, so holes (trailing ones included) stay holes. Data is moved with
// copy_file_range, or read and write where that is refused. Under Never,
// copy_file_range is used only between different filesystems: within one,
// the kernel may share extents instead of copying them.
func (c *counter) copySparse(ctx context.Context, rfd, wfd int, size int64) error {
	useRange := c.o.Reflink != Never
	if !useRange {
		var rs, ws unix.Stat_t
		if err := unix.Fstat(rfd, &rs); err != nil {
			return err
		}
		if err := unix.Fstat(wfd, &ws); err != nil {
			return err
		}
		useRange = rs.Dev != ws.Dev
	}
	var buf []byte
	for off := int64(0); off < size; {
		data, hole, err := NextData(rfd, off, size)
		if err != nil {
			return err
		}
		if data >= size {
			break
		}
		for pos := data; pos < hole; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := int(min(hole-pos, copyChunk))
			var done int
			if useRange {
				roff, woff := pos, pos
				done, err = unix.CopyFileRange(rfd, &roff, wfd, &woff, n, 0)
				switch err {
				case nil:
				case unix.EINTR:
					continue
				case unix.EXDEV, unix.EOPNOTSUPP, unix.EINVAL, unix.ENOSYS:
					useRange = false
					continue
				default:
					return fmt.Errorf("copy_file_range: %w", err)
				}
				if done == 0 {
					// Some filesystems answer 0 rather than an error where
					// they cannot copy: let read tell a real end of file.
					useRange = false
					continue
				}
			} else {
				if buf == nil {
					buf = make([]byte, bufSize)
				}
				if done, err = readWrite(rfd, wfd, pos, buf[:min(n, len(buf))]); err != nil {
					return err
				}
			}
			if done == 0 {
				hole = pos // the source shrank: the rest reads as zeros
				break
			}
			pos += int64(done)
			c.BytesCopied += int64(done)
			c.progress()
		}
		off = max(hole, data+1)
	}
	if err := unix.Ftruncate(wfd, size); err != nil {
		return fmt.Errorf("truncate: %w", err)
	}
	return nil
}

// NextData returns the first data extent of fd at or after off, below size:
// [data, hole), found with SEEK_DATA and SEEK_HOLE; data is size when there is
// none. A filesystem without SEEK_DATA shows all of it as data.
func NextData(fd int, off, size int64) (data, hole int64, err error) {
	data, err = unix.Seek(fd, off, unix.SEEK_DATA)
	switch err {
	case nil:
	case unix.ENXIO:
		return size, size, nil // no data after off
	case unix.EINVAL, unix.EOPNOTSUPP:
		data = off // no SEEK_DATA here: all data
	default:
		return 0, 0, fmt.Errorf("seek data: %w", err)
	}
	if data >= size {
		return size, size, nil
	}
	hole, err = unix.Seek(fd, data, unix.SEEK_HOLE)
	switch err {
	case nil:
	case unix.ENXIO, unix.EINVAL, unix.EOPNOTSUPP:
		hole = size // shrank under us, or no SEEK_HOLE
	default:
		return 0, 0, fmt.Errorf("seek hole: %w", err)
	}
	return data, min(hole, size), nil
}

// readWrite copies up to len(buf) bytes at off from rfd to wfd and returns
// how many; 0 means end of file.
func readWrite(rfd, wfd int, off int64, buf []byte) (int, error) {
	var n int
	for {
		var err error
		n, err = unix.Pread(rfd, buf, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("read: %w", err)
		}
		break
	}
	for w := 0; w < n; {
		m, err := unix.Pwrite(wfd, buf[w:n], off+int64(w))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("write: %w", err)
		}
		w += m
	}
	return n, nil
}

// File copies the regular file src to dst, which must not exist (an image
// volume, for example): FICLONE where o.Reflink and the filesystem allow,
// else a copy that keeps holes. Mode, owner, xattrs and times are copied
// too. src's last component must not be a symlink (the error then wraps
// ErrNotRegular, as for any other non-regular file); the directories above
// src and dst are trusted. On error the caller removes the partial dst.
func File(ctx context.Context, src, dst string, o Options) (Stats, error) {
	c := &counter{o: o}
	err := c.file(ctx, src, dst)
	if err != nil {
		err = fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return c.finish(), err
}

func (c *counter) file(ctx context.Context, src, dst string) error {
	if err := c.o.validate(); err != nil {
		return err
	}
	srcDir, srcName := filepath.Split(src)
	dstDir, dstName := filepath.Split(dst)
	if err := validName(srcName); err != nil {
		return err
	}
	if err := validName(dstName); err != nil {
		return err
	}
	sdir, err := openDirPath(srcDir)
	if err != nil {
		return err
	}
	defer unix.Close(sdir)
	pfd, err := unix.Openat(sdir, srcName, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: src, Err: err}
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return ErrNotRegular
	}
	rfd, err := OpenRegular(pfd, &st, func(flags int) (int, error) {
		return unix.Openat(sdir, srcName, flags|unix.O_NOFOLLOW, 0)
	})
	if err == ErrChanged {
		return fmt.Errorf("%w: %w", ErrChanged, ErrNotRegular)
	}
	if err != nil {
		return &os.PathError{Op: "open", Path: src, Err: err}
	}
	defer unix.Close(rfd)
	ddir, err := openDirPath(dstDir)
	if err != nil {
		return err
	}
	defer unix.Close(ddir)
	wfd, err := unix.Openat(ddir, dstName, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &os.PathError{Op: "create", Path: dst, Err: err}
	}
	defer unix.Close(wfd)
	if err := c.copyData(ctx, rfd, wfd, st.Size); err != nil {
		return err
	}
	if err := c.setFdMeta(rfd, wfd, &st); err != nil {
		return err
	}
	c.Files++
	return nil
}

// openDirPath opens a trusted directory path (the current directory for "")
// as an O_PATH fd.
func openDirPath(dir string) (int, error) {
	if dir == "" {
		dir = "."
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return fd, nil
}

// ReflinkSupported reports whether files in dir can share extents: it clones
// a small unnamed temporary file (O_TMPFILE; a named one, removed at once,
// where O_TMPFILE is not supported) into another. Nothing is left behind.
func ReflinkSupported(dir string) bool {
	src, err := tempFile(dir)
	if err != nil {
		return false
	}
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return false
	}
	dst, err := tempFile(dir)
	if err != nil {
		return false
	}
	defer dst.Close()
	return unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())) == nil
}

// tempFile opens a new file in dir that has no name.
func tempFile(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), dir), nil
	}
	f, err := os.CreateTemp(dir, ".reflink-probe-*")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// AllZero reports whether b holds only zero bytes.
func AllZero(b []byte) bool {
	var zero [4096]byte
	for len(b) > 0 {
		n := min(len(b), len(zero))
		if !bytes.Equal(b[:n], zero[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
