package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// locksDir holds the lock files of a shared pool: <path>/locks/<kind>-<hash>.
const locksDir = "locks"

// fileLock is an exclusive open-file-description lock (F_OFD_SETLK) on a file in a
// shared pool's locks/ directory. OFD locks are POSIX byte-range locks owned by the
// open file, not the process: they exclude two engines in one process as well as two
// hosts, and GlusterFS (its features/locks translator), NFSv4 and CephFS honour them
// across clients; a host that dies loses its locks when its client disconnects.
type fileLock struct {
	f    *os.File
	path string
}

// tryLock takes the lock called name, or fails at once with ErrBusy when another
// process or host holds it. Pools that are not shared need no file locks (the
// in-process try-locks cover their only process) and get a nil lock.
func (p *Pool) tryLock(name string) (*fileLock, error) {
	if !p.Shared() {
		return nil, nil
	}
	dir := filepath.Join(p.cfg.Path, locksDir)
	path := filepath.Join(dir, name)
	for range 4 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, os.ErrNotExist) {
			// The callers checked the pool (usable); its mount may have gone since,
			// and locks/ is never made on the local disk beneath.
			if m, ok := p.backend.(poolMounter); ok {
				if err := m.Live(); err != nil {
					return nil, p.notServed(err)
				}
			}
			if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
				return nil, fmt.Errorf("pool %s: %w", p.cfg.Name, err)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("pool %s: lock %s: %w", p.cfg.Name, name, err)
		}
		lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0}
		err = unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			f.Close()
			return nil, fmt.Errorf("pool %s: %s is being worked on by another process or host: %w", p.cfg.Name, name, ErrBusy)
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("pool %s: lock %s: %w", p.cfg.Name, name, err)
		}
		// The holder before us removes the file as it unlocks: the lock counts only
		// when the file we locked is still the one at path.
		var held, now unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(path, &now) == nil && held.Dev == now.Dev && held.Ino == now.Ino {
			return &fileLock{f: f, path: path}, nil
		}
		f.Close()
	}
	return nil, fmt.Errorf("pool %s: %s keeps changing under its lock: %w", p.cfg.Name, name, ErrBusy)
}

// unlock removes the lock file, then releases the lock by closing it: an idle pool
// keeps no lock files. Nil locks (pools that are not shared) do nothing.
func (l *fileLock) unlock() {
	if l == nil {
		return
	}
	_ = os.Remove(l.path)
	_ = l.f.Close()
}

func volumeLock(hash string) string   { return "v-" + hash }
func snapshotLock(hash string) string { return "s-" + hash }

// buildLock is the lock a builder holds on its tmp/ entry: <hash>.<rand> is a volume
// being created, s<hash>.<rand> a snapshot being copied.
func buildLock(entry string) string {
	name, _, _ := strings.Cut(entry, ".")
	if h, ok := strings.CutPrefix(name, "s"); ok && len(h) == hashLen {
		return snapshotLock(h)
	}
	return volumeLock(name)
}

// renameNoReplace renames a complete directory into place, never over an existing
// one: renameat2(RENAME_NOREPLACE), or where the filesystem lacks it (FUSE
// filesystems such as GlusterFS answer EINVAL) a plain rename, which cannot replace
// the target either, as a committed volume or snapshot directory is never empty. The
// caller holds the name's lock in a shared pool.
func renameNoReplace(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		if _, serr := os.Lstat(to); serr == nil {
			return unix.EEXIST
		}
		err = os.Rename(from, to)
	}
	return err
}
