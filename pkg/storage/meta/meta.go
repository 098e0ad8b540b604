// Package meta writes small metadata files so that a crash at any instant leaves
// either the old or the new content, never a torn file, and lets concurrent callers
// share directory flushes.
package meta

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

var tmpSeq atomic.Uint64

// WriteFile replaces dir/name with data atomically and durably: write a temp file in
// the same directory, fsync it, rename it over name, fsync the directory.
func WriteFile(dir, name string, data []byte) error {
	// The name is unique across processes too: a temp file left by a killed driver
	// never collides with a later one (start-up removes such leftovers).
	tmp := filepath.Join(dir, "."+name+".tmp"+strconv.Itoa(os.Getpid())+"-"+strconv.FormatUint(tmpSeq.Add(1), 10))
	if err := WriteNew(tmp, data); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	return SyncDir(dir)
}

// WriteNew creates path (which must not exist), writes data and fsyncs the file.
// The caller makes the directory entry durable.
func WriteNew(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		_ = os.Remove(path)
		return fmt.Errorf("write %s: %w", path, werr)
	}
	return nil
}

// SyncDir fsyncs a directory so the entries created, renamed or removed in it persist.
func SyncDir(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// DirSyncer fsyncs one directory on behalf of many concurrent callers (group commit).
// A caller that changed an entry calls Sync; it returns once an fsync that started
// after the call has completed. While one fsync runs, later callers wait and are all
// covered by the single next fsync, so C concurrent creates cost far fewer than C
// flushes and no caller waits behind a queue of flushes.
type DirSyncer struct {
	dir string

	mu      sync.Mutex
	cond    *sync.Cond
	running bool
	started uint64 // generation of the newest fsync started
	done    uint64 // generation of the newest fsync finished
	errs    map[uint64]error
}

// NewDirSyncer returns a syncer for dir.
func NewDirSyncer(dir string) *DirSyncer {
	s := &DirSyncer{dir: dir, errs: map[uint64]error{}}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// Sync makes every change made to the directory before the call durable.
func (s *DirSyncer) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Any fsync that starts from now on covers our change.
	need := s.started + 1
	for s.done < need {
		if s.running {
			s.cond.Wait()
			continue
		}
		s.running = true
		s.started++
		gen := s.started
		s.mu.Unlock()
		err := SyncDir(s.dir)
		s.mu.Lock()
		s.running = false
		s.done = gen
		if err != nil {
			s.errs[gen] = err
		}
		s.cond.Broadcast()
	}
	// Generations finish in order, so generation need is the fsync that covered us.
	err := s.errs[need]
	for g := range s.errs {
		if g+1024 < s.done {
			delete(s.errs, g)
		}
	}
	return err
}
