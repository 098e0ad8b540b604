package testengine

import (
	"context"
	"fmt"
	"os"
	"sync"

	"github.com/berth-csi/berth/pkg/storage"
)

// DirRemote is a storage.Remote serving sources from directories of this machine,
// as other nodes' plugins would through the transfer channel: each source ID
// lives on node "node-b" at 10.0.0.2.
type DirRemote struct {
	mu      sync.Mutex
	dirs    map[string]string // source ID -> its data directory
	got     storage.Fetched   // what Fetch reports
	lookErr error             // Locate's answer for unknown IDs (nil: ErrNotFound)
	fetched []storage.Peer
	hold    chan struct{} // Fetch waits until it is closed (nil: no wait)
}

// Hold makes the next Fetches wait until the returned func is called.
func (f *DirRemote) Hold() (release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h := make(chan struct{})
	f.hold = h
	return sync.OnceFunc(func() { close(h) })
}

// NewDirRemote serves no source yet; Fetch reports a mount-volume tree of got's size.
func NewDirRemote(sizeBytes int64) *DirRemote {
	return &DirRemote{dirs: map[string]string{},
		got: storage.Fetched{Tree: true, SizeBytes: sizeBytes, AccessType: storage.AccessMount}}
}

// Add serves dir as source id.
func (f *DirRemote) Add(id, dir string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dirs[id] = dir
}

// Report sets what Fetch reports it received.
func (f *DirRemote) Report(got storage.Fetched) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = got
}

// FailLookups makes Locate fail with err for unknown IDs (nil: ErrNotFound again).
func (f *DirRemote) FailLookups(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookErr = err
}

// Fetched lists the peers fetched from, in order.
func (f *DirRemote) Fetched() []storage.Peer {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]storage.Peer(nil), f.fetched...)
}

// Locate implements storage.Remote.
func (f *DirRemote) Locate(_ context.Context, src *storage.Source) (storage.Peer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.dirs[src.ID]; ok {
		return storage.Peer{Node: "node-b", Address: "10.0.0.2"}, nil
	}
	if f.lookErr != nil {
		return storage.Peer{}, f.lookErr
	}
	return storage.Peer{}, fmt.Errorf("no PersistentVolume names %s: %w", src.ID, storage.ErrNotFound)
}

// Fetch implements storage.Remote: a copy of the source's directory at dest.
func (f *DirRemote) Fetch(_ context.Context, src *storage.Source, peer storage.Peer, dest string, _ int64, progress func(int64)) (*storage.Fetched, error) {
	f.mu.Lock()
	dir, got, hold := f.dirs[src.ID], f.got, f.hold
	f.fetched = append(f.fetched, peer)
	f.mu.Unlock()
	if hold != nil {
		<-hold
	}
	if _, err := os.Lstat(dest); err == nil {
		return nil, fmt.Errorf("%s exists", dest)
	}
	if err := os.CopyFS(dest, os.DirFS(dir)); err != nil {
		return nil, err
	}
	if progress != nil {
		progress(1)
	}
	return &got, nil
}
