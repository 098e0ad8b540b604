package storage

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
)

// Export is a volume's or snapshot's data held open for reading by another node
// (pkg/transfer sends it). While an Export is open its source cannot be deleted on
// this node (ErrInUse); a deletion elsewhere (another host of a shared pool) is
// found by Close.
type Export struct {
	ID string
	// Path is the data directory, or the image file when Tree is false. The path
	// up to it is the engine's; what lies beneath a directory is a pod's.
	Path       string
	Tree       bool
	SizeBytes  int64
	AccessType string
	FSType     string
	// Generation differs between two objects that had the same ID (one deleted,
	// another made under its name): the inode of the source's directory and its
	// record's creation time.
	Generation string

	pool   *Pool
	src    *copySource
	before os.FileInfo
	once   sync.Once
}

// Export opens the volume or snapshot id (snapshots by their s1- prefix) for
// reading. A snapshot still being copied is ErrPrecondition. An image is read as
// it is: a staged (published) image is not frozen, since a transfer may run for
// minutes; a consistent copy of a live image comes from a snapshot of it.
func (e *Engine) Export(ctx context.Context, id string) (*Export, error) {
	kind, resolve := SourceVolume, e.Resolve
	if strings.HasPrefix(id, snapshotPrefix) {
		kind, resolve = SourceSnapshot, e.ResolveSnapshot
	}
	p, _, err := resolve(id)
	if err != nil {
		return nil, err
	}
	src, err := p.sourceOf(&Source{Kind: kind, ID: id})
	if err != nil {
		return nil, err
	}
	before, err := os.Lstat(src.entry)
	if err != nil {
		return nil, sourceGone(src.what, src.entry, err)
	}
	p.mu.Lock()
	p.exports[id]++
	p.mu.Unlock()
	_, isDir := p.backend.Data()
	x := &Export{ID: id, Path: src.from, Tree: isDir, SizeBytes: src.size, AccessType: src.access,
		FSType: src.fsType, pool: p, src: src, before: before}
	if st, ok := before.Sys().(*syscall.Stat_t); ok {
		x.Generation = fmt.Sprintf("%d-%d", st.Ino, src.created.UnixNano())
	}
	return x, nil
}

// Close ends the read. An error (wrapping ErrNotFound) says the source was
// deleted while it was read: what was read must not be used.
func (x *Export) Close() error {
	x.once.Do(func() {
		p := x.pool
		p.mu.Lock()
		if p.exports[x.ID]--; p.exports[x.ID] <= 0 {
			delete(p.exports, x.ID)
		}
		p.mu.Unlock()
	})
	return sourceKept(x.src, x.before)
}

// exporting reports whether an Export of id is open.
func (p *Pool) exporting(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exports[id] > 0
}
