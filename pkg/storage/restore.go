package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/berth-csi/berth/pkg/storage/clone"
	"golang.org/x/sys/unix"
)

// Content source kinds.
const (
	SourceSnapshot = "snapshot"
	SourceVolume   = "volume"
)

var copyOptions = clone.Options{Reflink: clone.Auto, Specials: clone.Recreate}

// copySource is what a create request's content source resolves to in the pool.
type copySource struct {
	from   string // the path of its data: a directory or an image file
	size   int64
	access string
	fsType string  // the filesystem an image of it holds ("" when none)
	vol    *Record // the volume a clone copies (nil for a snapshot)
	// created is when the source was made (its record's createdAt).
	created time.Time
	// what names it, entry is its directory (volumes/<hash> or snapshots/<hash>), and
	// reread reads its record again, for the check that it outlived the copy.
	what, entry string
	reread      func() error
	// chunks: a chunked image backup (from is its directory: backupimage.go).
	chunks bool
}

// sourceOf resolves a create request's content source inside this pool. A snapshot
// still being copied is ErrPrecondition (never served from a partial copy); a source
// in another pool is ErrInvalid.
func (p *Pool) sourceOf(src *Source) (*copySource, error) {
	name, _ := p.backend.Data()
	switch src.Kind {
	case SourceSnapshot:
		pid, err := ParseSnapshotID(src.ID)
		if err != nil {
			return nil, fmt.Errorf("snapshot %s is not in Berth's ID format: %w", src.ID, ErrNotFound)
		}
		if pid.Pool != p.cfg.Name {
			return p.sharedSnapshotSource(src, pid)
		}
		s, err := p.Snapshot(pid.Hash)
		if err != nil {
			return nil, err
		}
		if !s.Ready {
			return nil, fmt.Errorf("snapshot %s is not ready to use yet: %w", src.ID, ErrPrecondition)
		}
		entry := filepath.Join(p.cfg.Path, snapshotsDir, pid.Hash)
		return &copySource{from: filepath.Join(entry, name), created: s.CreatedAt,
			size: s.SizeBytes, access: s.AccessType, fsType: s.FSType,
			what: "snapshot " + src.ID, entry: entry, reread: func() error {
				s, err := p.readSnapshotAt(pid.Hash)
				if err == nil && s.ID != src.ID {
					err = fmt.Errorf("its record names %s", s.ID)
				}
				return err
			}}, nil
	case SourceVolume:
		pid, err := ParseVolumeID(src.ID)
		if err != nil {
			return nil, fmt.Errorf("volume %s is not in Berth's ID format: %w", src.ID, ErrNotFound)
		}
		if pid.Pool != p.cfg.Name {
			return nil, fmt.Errorf("volume %s is in pool %s, not %s: clone within its pool: %w", src.ID, pid.Pool, p.cfg.Name, ErrInvalid)
		}
		r, err := p.Get(pid.Hash)
		if err != nil {
			return nil, err
		}
		if err := p.resyncing(pid.Hash); err != nil {
			return nil, err
		}
		return &copySource{from: filepath.Join(p.VolumeDir(pid.Hash), name), created: r.CreatedAt,
			size: r.CapacityBytes, access: r.AccessType, fsType: r.FSType, vol: r,
			what: "volume " + r.ID, entry: p.VolumeDir(pid.Hash), reread: p.rereadVolume(r)}, nil
	}
	return nil, fmt.Errorf("content source kind %q: %w", src.Kind, ErrInvalid)
}

// checkSource validates a content source against the volume being created.
func (p *Pool) checkSource(req *CreateRequest, size int64) error {
	if req.Source == nil {
		return nil
	}
	src, err := p.sourceOf(req.Source)
	if err != nil {
		return err
	}
	if size < src.size {
		return fmt.Errorf("%s %s holds %d bytes, more than the %d requested: %w", req.Source.Kind, req.Source.ID, src.size, size, ErrOutOfRange)
	}
	if src.access != req.AccessType {
		return fmt.Errorf("%s %s is a %s volume, not %s: %w", req.Source.Kind, req.Source.ID, src.access, req.AccessType, ErrInvalid)
	}
	// A copied image holds its source's filesystem: a volume recorded with another
	// would fail to stage.
	if _, isDir := p.backend.Data(); !isDir && src.fsType != req.FSType {
		return fmt.Errorf("%s %s holds a %q filesystem, not %q: %w", req.Source.Kind, req.Source.ID, src.fsType, req.FSType, ErrInvalid)
	}
	return nil
}

// fill copies a new volume's content source into its directory (under tmp/), after
// the kind has built it: into the existing data directory (so a quota volume's
// project is inherited by every copied file), or as the image file, grown to the
// new capacity (the node grows the filesystem at stage). A source deleted during the
// copy (on another host of a shared pool) fails it, as for a snapshot (copyData).
// progress, when not nil, is told the bytes copied so far.
func (p *Pool) fill(ctx context.Context, r *Record, volDir string, progress func(int64)) error {
	if r.pullFrom.Node != "" {
		return p.pull(ctx, r, volDir, progress)
	}
	src, err := p.sourceOf(r.ContentSource)
	if err != nil {
		return err
	}
	before, err := os.Lstat(src.entry)
	if err != nil {
		return sourceGone(src.what, src.entry, err)
	}
	if err := p.fillFrom(ctx, src, r, volDir, progress); err != nil {
		if kerr := sourceKept(src, before); kerr != nil {
			return kerr // whatever the copy met, it met it in a vanishing tree
		}
		return err
	}
	if err := sourceKept(src, before); err != nil {
		return err
	}
	return syncFS(volDir)
}

func (p *Pool) fillFrom(ctx context.Context, src *copySource, r *Record, volDir string, progress func(int64)) error {
	name, isDir := p.backend.Data()
	o := copyOptions
	if progress != nil {
		o.Progress = bothProgress(copyOptions.Progress, progress)
	}
	if isDir {
		o.Into = true
		_, err := clone.Tree(ctx, src.from, volDir, name, o)
		return err
	}
	dst := filepath.Join(volDir, name)
	if err := os.Remove(dst); err != nil {
		return err
	}
	if src.chunks {
		if err := restoreChunks(ctx, src.from, dst, progress); err != nil {
			return err
		}
		return os.Truncate(dst, r.CapacityBytes)
	}
	if src.vol != nil {
		thaw := p.freeze(ctx, src.vol)
		defer thaw()
	}
	if _, err := clone.File(ctx, src.from, dst, o); err != nil {
		return err
	}
	return os.Truncate(dst, r.CapacityBytes)
}

// copyData copies a volume's data into dstDir for a snapshot. The copy skips entries
// that vanish while it runs (a pod deleting a file), but a source volume deleted
// meanwhile (on another host of a shared pool: this one refuses to delete a volume
// being copied) leaves only a partial copy: that is ErrNotFound, never a snapshot.
func (p *Pool) copyData(ctx context.Context, src *Record, dstDir string) error {
	name, isDir := p.backend.Data()
	cs := &copySource{what: "volume " + src.ID, entry: p.VolumeDir(src.Hash()), reread: p.rereadVolume(src)}
	before, err := os.Lstat(cs.entry)
	if err != nil {
		return sourceGone(cs.what, cs.entry, err)
	}
	from := filepath.Join(cs.entry, name)
	if isDir {
		_, err = clone.Tree(ctx, from, dstDir, name, copyOptions)
	} else {
		thaw := p.freeze(ctx, src)
		_, err = clone.File(ctx, from, filepath.Join(dstDir, name), copyOptions)
		thaw()
	}
	if kerr := sourceKept(cs, before); kerr != nil {
		return kerr // whatever the copy met, it met it in a vanishing tree
	}
	if err != nil {
		return err
	}
	return syncFS(dstDir)
}

// rereadVolume reads the record of volume r again and checks it is still r's.
func (p *Pool) rereadVolume(r *Record) func() error {
	return func() error {
		now, err := p.readVolume(r.Hash())
		if err == nil && now.ID != r.ID {
			err = fmt.Errorf("its record names %s", now.ID)
		}
		return err
	}
}

// sourceKept checks, once a copy of src has ended, that the source was there all
// along: the directory found before the copy (before) is still at its path, with
// src's record in it. A volume or snapshot is deleted by renaming its directory away,
// so the same directory still in place means nothing was deleted under the copy.
func sourceKept(src *copySource, before os.FileInfo) error {
	now, err := os.Lstat(src.entry)
	switch {
	case err != nil:
	case !os.SameFile(before, now):
		err = errors.New("another directory is there now")
	default:
		err = src.reread()
	}
	if err != nil {
		return sourceGone(src.what, src.entry, err)
	}
	return nil
}

func sourceGone(what, dir string, err error) error {
	return errorf(ErrNotFound, "source %s was deleted during the copy (%s: %v): the partial copy is discarded", what, dir, err)
}

// syncFS flushes the filesystem holding dir: a copied tree is not fsynced file by
// file, and a snapshot or restored volume is acknowledged only once its data is
// durable. One syncfs(2) covers every file the copy wrote.
func syncFS(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}

// bothProgress tells a and then b the bytes copied; a nil one is skipped.
func bothProgress(a, b func(int64)) func(int64) {
	if a == nil {
		return b
	}
	return func(n int64) { a(n); b(n) }
}
