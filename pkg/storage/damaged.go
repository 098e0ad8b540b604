package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// A volume or snapshot directory whose record cannot be read (corrupt JSON, a version
// this Berth does not know, an ID or pool that does not match the directory, no record
// at all) is damaged: it may hold a user's data, or belong to a newer Berth. It is
// neither served nor indexed, and nothing of it is touched. Each pool keeps the set of
// its damaged entries, found at start-up (and by every rescan of a shared pool), so
// that nothing it holds is taken for free either: deleting or creating that ID again
// is refused (ErrPrecondition), the quota project its data is charged to stays taken,
// and an image pool keeps its loop device attached. An operator repairs the record or
// moves the directory away (docs/operations.md, "Unreadable records"), then restarts
// the driver.

// damage is why one entry's record cannot be read.
type damage struct {
	dir   string
	cause error
}

// damageErr is the refusal of an operation on a damaged entry.
func damageErr(kind string, d damage) error {
	return errorf(ErrPrecondition, "%s directory %s has no readable, matching record (%v): it is left alone, "+
		"and deleting or creating it again is refused until an operator repairs the record or moves the directory "+
		"away and restarts the driver (docs/operations.md, \"Unreadable records\")", kind, d.dir, d.cause)
}

// isDamage tells a record that cannot be read from a filesystem that does not answer:
// on a shared pool a dead mount (ENOTCONN, ESTALE, EIO) damages nothing. On a
// node-local pool the disk is this process's alone, and any failure counts.
func (p *Pool) isDamage(err error) bool { return !p.Shared() || !isStale(err) }

// readVolume reads the record of volumes/<hash> and checks that it belongs there. A
// directory that does not exist is os.ErrNotExist; one that exists without a readable,
// matching record is a *damage (or a plain error when the filesystem does not answer).
func (p *Pool) readVolume(hash string) (*Record, error) {
	dir := p.VolumeDir(hash)
	r, err := readRecord(dir)
	if err == nil {
		if err = p.checkRecord(r, hash); err == nil {
			return r, nil
		}
	}
	return nil, p.classify(dir, err)
}

// classify turns the error of reading the record in dir into os.ErrNotExist when dir
// is gone, a *damage when dir is there without a readable record, or err itself when
// the filesystem does not answer.
func (p *Pool) classify(dir string, err error) error {
	if errors.Is(err, os.ErrNotExist) {
		// The record is committed with its directory and leaves with it: a directory
		// without one is damage, a missing directory an entry that is gone.
		switch missing, cerr := lacksRecord(dir); {
		case cerr != nil:
			err = cerr
		case !missing:
			return err
		default:
			err = fmt.Errorf("no %s", recordFile)
		}
	}
	if p.isDamage(err) {
		return &damage{dir: dir, cause: err}
	}
	return err
}

// lacksRecord reports whether dir is there without a record: false when dir is gone,
// or when a record is in it now (committed, with its directory, since it was read).
// The directory is held open while it is checked and compared with what is at its
// path, so an entry renamed away meanwhile (deleted elsewhere) is not taken for one
// without a record.
func lacksRecord(dir string) (bool, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, &os.PathError{Op: "open", Path: dir, Err: err} // not a directory: damage
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	switch err := unix.Fstatat(fd, recordFile, &st, unix.AT_SYMLINK_NOFOLLOW); {
	case err == nil:
		return false, nil
	case !errors.Is(err, unix.ENOENT):
		return false, &os.PathError{Op: "stat", Path: filepath.Join(dir, recordFile), Err: err}
	}
	var held, now unix.Stat_t
	if err := unix.Fstat(fd, &held); err != nil {
		return false, &os.PathError{Op: "stat", Path: dir, Err: err}
	}
	if err := unix.Lstat(dir, &now); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, &os.PathError{Op: "lstat", Path: dir, Err: err}
	}
	return held.Dev == now.Dev && held.Ino == now.Ino, nil
}

func (d *damage) Error() string { return fmt.Sprintf("%s: %v", d.dir, d.cause) }

// damagedVolume is the refusal of an operation on volumes/<hash> when it is damaged,
// else nil. A damaged directory an operator has since moved away is forgotten.
func (p *Pool) damagedVolume(hash string) error {
	p.mu.Lock()
	d, ok := p.damaged[hash]
	p.mu.Unlock()
	if !ok {
		return nil
	}
	if _, err := os.Lstat(d.dir); errors.Is(err, os.ErrNotExist) {
		p.mu.Lock()
		delete(p.damaged, hash)
		p.mu.Unlock()
		return nil
	}
	return damageErr("volume", d)
}

// damagedSnapshot is damagedVolume for snapshots/<hash>.
func (p *Pool) damagedSnapshot(hash string) error {
	p.snaps.mu.Lock()
	d, ok := p.snaps.damaged[hash]
	p.snaps.mu.Unlock()
	if !ok {
		return nil
	}
	if _, err := os.Lstat(d.dir); errors.Is(err, os.ErrNotExist) {
		p.snaps.mu.Lock()
		delete(p.snaps.damaged, hash)
		p.snaps.mu.Unlock()
		return nil
	}
	return damageErr("snapshot", d)
}

// logDamage reports, at error level, each entry of found that known lacks: every
// damaged entry once, at start-up or when a rescan of a shared pool first finds it.
func (p *Pool) logDamage(ctx context.Context, kind string, found, known map[string]damage) {
	logger := klog.FromContext(ctx)
	for _, hash := range sortedKeys(found) {
		if _, ok := known[hash]; ok {
			continue
		}
		d := found[hash]
		logger.Error(d.cause, kind+" directory without a readable, matching record: left alone; deleting or creating it again "+
			"is refused until an operator repairs it (docs/operations.md, \"Unreadable records\")",
			"pool", p.cfg.Name, "directory", d.dir)
	}
}

func sortedKeys[T any](m map[string]T) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// projectHolder is a kind whose volumes hold quota project IDs: it reads the ID a
// volume's data is charged to from the volume's directory itself.
type projectHolder interface {
	// dataProject is the project of volDir's data, 0 when it has no data directory.
	dataProject(volDir string) (uint32, error)
}

// keepProjects keeps the quota project IDs a damaged volume may hold taken: the one
// its data directory is charged to and, where the record still decodes, the one it
// names. A data directory whose project cannot be read stops every allocation
// (ErrPrecondition) rather than risk handing its ID to a new volume.
func (p *Pool) keepProjects(ctx context.Context, d damage) {
	h, ok := p.backend.(projectHolder)
	if !ok {
		return
	}
	if data, err := os.ReadFile(filepath.Join(d.dir, recordFile)); err == nil {
		var named struct {
			ProjectID uint32 `json:"projectID"`
		}
		if json.Unmarshal(data, &named) == nil {
			p.projects.mark(named.ProjectID)
		}
	}
	id, err := h.dataProject(d.dir)
	if err != nil {
		klog.FromContext(ctx).Error(err, "Cannot read the quota project of a volume directory without a readable record: "+
			"no project ID is allocated until it is repaired", "pool", p.cfg.Name, "directory", d.dir)
		p.projects.block(d.dir, err)
		return
	}
	p.projects.mark(id)
}
