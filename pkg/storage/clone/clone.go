// Package clone copies a volume's data for snapshots, restores and clones:
// copy-on-write (FICLONE) where the filesystem can share extents, a faithful,
// hole-preserving copy elsewhere.
//
// The source is data a pod controls and may have prepared with hostile
// intent. A copy never follows a symlink, never leaves the source tree or the
// destination tree, and holds a bounded number of fds however deep the tree:
// every lookup in the source is an openat2(2) relative to a directory fd
// already held, confined by RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS,
// RESOLVE_NO_MAGICLINKS and RESOLVE_NO_XDEV (see package safefs). No path
// string built from entry names is ever resolved in the source.
//
// Nor does a copy open a device node, fifo or socket, even one swapped in for
// a regular file while the copy runs: each entry is first opened O_PATH
// (which opens nothing) and its type read from that fd; a regular file is
// then opened for reading through the fd's /proc/self/fd magic link, which
// reaches that very inode. Without /proc the file is opened by name with
// O_NONBLOCK and refused unless it is the inode checked, so a fifo can never
// block the copy; only then could a device swapped in at that instant be
// opened (never read). Symlinks and special files are never opened at all;
// their xattrs are read and written through the magic links of O_PATH fds
// (without /proc they are skipped and counted in Stats.XattrsSkipped).
//
// What is copied, for every entry: the type, the permission bits including
// setuid, setgid and sticky, the owner and group, the extended attributes
// (ACLs and security labels included) and the access and modification times
// to the nanosecond; for regular files the data, with holes kept as holes;
// hard links between regular files of the tree as hard links, within a
// memory budget (a record per file whose other names are still to come, 64
// MiB in all: past it, further names are independent copies, counted in
// Stats.LinksCopied; later names reach the first copy's directory by file
// handle, open_by_handle_at, in one step whatever the depth, or by its path
// where handles do not work: without CAP_DAC_READ_SEARCH, or on a
// filesystem without them); symlinks as symlinks whose target text is copied
// verbatim and never resolved.
//
// What is not: inode flags (chattr: immutable, append-only, nodump...) and
// project IDs (new entries inherit the destination directory's when it has
// the project-inherit flag: see Options.Into); change times
// (the kernel sets them); the content of filesystems mounted inside the
// source (a mount point is skipped and counted in Stats.Skipped, like unix
// sockets, which cannot be recreated meaningfully). Device nodes and fifos
// are recreated with mknod, or skipped, as Options.Specials says.
//
// Tree and File do not fsync what they write: the caller syncs the
// destination filesystem (syncfs) before it publishes the copy.
package clone

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Mode says whether a copy may, must or must not share extents with its source.
type Mode int

const (
	// Auto clones with FICLONE where the filesystem can, and copies the data
	// where it cannot.
	Auto Mode = iota
	// Never always copies the data, so the copy shares no extent with the
	// source.
	Never
	// Always clones or fails with an error wrapping ErrNoReflink.
	Always
)

func (m Mode) String() string {
	switch m {
	case Auto:
		return "auto"
	case Never:
		return "never"
	case Always:
		return "always"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// SpecialPolicy says what happens to device nodes and fifos. Unix sockets
// are always skipped: a socket file is useless without the process that
// listens on it.
type SpecialPolicy int

const (
	// Recreate makes device nodes and fifos again with mknod, with the same
	// type, device number, mode, owner, xattrs and times. They are never
	// opened. The destination is meant to be mounted nodev.
	Recreate SpecialPolicy = iota
	// Skip leaves device nodes and fifos out of the copy (counted in
	// Stats.Skipped).
	Skip
)

// Options tunes a copy. The zero value clones where possible and recreates
// device nodes and fifos.
type Options struct {
	// Reflink: Auto, Never or Always.
	Reflink Mode
	// Progress, if set, is called from the copying goroutine with the bytes
	// done so far (Stats.BytesCloned + Stats.BytesCopied): after every regular
	// file and, during a large copy, every few MiB.
	Progress func(done int64)
	// Specials: Recreate or Skip device nodes and fifos.
	Specials SpecialPolicy
	// Into makes Tree copy into dstParent/dstName, an existing empty
	// directory made by the caller (for example with a quota project that new
	// files inherit), instead of creating it. Its mode, owner, xattrs and
	// times are still set from the source root.
	Into bool
	// Base, when set, is the root of an earlier copy of the same tree on the
	// destination's filesystem: unchanged regular files are hard-linked from it
	// rather than copied (base.go). Only Tree uses it.
	Base string
}

// Stats counts what a copy did. On error the counts cover what was done
// before the error.
type Stats struct {
	// Files counts regular-file names made, hard links included.
	Files int64
	// LinksCopied counts multiply-linked files copied without remembering
	// them because the hard-link memory budget (64 MiB) was spent: their
	// other names, met later, become independent copies.
	LinksCopied int64
	// Dirs counts directories copied, the root included.
	Dirs int64
	// Symlinks counts symlinks made.
	Symlinks int64
	// Specials counts device nodes and fifos recreated.
	Specials int64
	// Skipped counts entries left out: unix sockets, mount points, device
	// nodes and fifos under Skip, and directories that are the destination
	// itself (when the destination lies inside the source).
	Skipped int64
	// XattrsSkipped counts extended attributes the destination filesystem
	// refused as unsupported (EOPNOTSUPP), plus symlinks and special files
	// whose attributes could not be read because /proc is not mounted.
	XattrsSkipped int64
	// BytesCloned is the size (holes included) of the files whose data was
	// shared by FICLONE.
	BytesCloned int64
	// BytesCopied is the data actually copied (holes excluded).
	BytesCopied int64
	// FilesLinked counts the regular files hard-linked from Options.Base, and
	// BytesLinked their size; Files counts them too.
	FilesLinked, BytesLinked int64
	// Reflinked is true when at least one file was cloned with FICLONE and
	// none had its data copied.
	Reflinked bool
}

var (
	// ErrNoReflink is wrapped by errors of an Always copy that could not
	// clone.
	ErrNoReflink = errors.New("reflink not supported")
	// ErrNotRegular is wrapped by File's error when the source is not a
	// regular file.
	ErrNotRegular = errors.New("not a regular file")
)

// validName accepts a single, non-special path component.
func validName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return unix.EINVAL
	}
	return nil
}

func (o *Options) validate() error {
	if o.Reflink < Auto || o.Reflink > Always {
		return fmt.Errorf("reflink mode %v: %w", o.Reflink, unix.EINVAL)
	}
	if o.Specials < Recreate || o.Specials > Skip {
		return fmt.Errorf("special-file policy %d: %w", int(o.Specials), unix.EINVAL)
	}
	return nil
}

// counter tracks progress and stats shared by the file copies of one call.
type counter struct {
	Stats
	o       Options
	noClone bool  // FICLONE failed for good between these filesystems
	cloned  int64 // files cloned with FICLONE
	copied  int64 // files whose data was copied
}

func (c *counter) progress() {
	if c.o.Progress != nil {
		c.o.Progress(c.BytesCloned + c.BytesCopied + c.BytesLinked)
	}
}

func (c *counter) finish() Stats {
	s := c.Stats
	s.Reflinked = c.cloned > 0 && c.copied == 0
	return s
}
