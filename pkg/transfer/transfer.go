// Package transfer is the channel between Berth's node plugins: a Server streams a
// volume's or snapshot's data to a client on another node, which Pulls it into a
// directory or image file of its own. It knows nothing of Kubernetes or CSI.
//
// What travels: a directory tree as it is (regular files with their holes, hard
// links, symlinks as links whose targets are never resolved, device nodes and
// fifos as nodes, owners, permission bits, access and modification times,
// extended attributes), or an image file with its holes. The sender reads the
// source through the engine's confined walk (package safefs: openat2 beneath
// the source, no symlink followed, no mount crossed, nothing but regular files
// opened) and copy primitives (package clone); the receiver writes only beneath
// its staging directory, whatever the sender says (names are single components,
// every lookup is confined, a link may only name a regular file it made).
//
// Who may use it: both ends authenticate with certificates of one CA (mutual
// TLS 1.3); a client without one, or with another CA's, is refused during the
// handshake, before the server reads a request or opens a source.
//
// How it survives interruptions: a Pull writes into a staging directory beside
// its destination, with a state file that says how far it got; after a dropped
// connection, or a restart of either side, the next attempt asks the server to
// go on from there (the walk order is fixed: names sorted bytewise), and only a
// complete, flushed copy is renamed to the destination. See docs/design.md,
// "Transfer channel".
package transfer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Kind is what a source holds.
type Kind uint8

const (
	// KindTree is a directory tree (dir, quota and shared pools).
	KindTree Kind = 1
	// KindImage is an image file (image pools).
	KindImage Kind = 2
)

func (k Kind) String() string {
	switch k {
	case KindTree:
		return "tree"
	case KindImage:
		return "image"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Errors, wrapped by what Pull and the server return; an error frame carries
// the sentinel to the other side.
var (
	// ErrNotFound: the server has no such volume or snapshot (or it was deleted
	// during the transfer).
	ErrNotFound = errors.New("not found")
	// ErrRefused: the server does not let this peer read this source.
	ErrRefused = errors.New("refused")
	// ErrBusy: the server runs as many transfers as it may, or the source cannot
	// be read right now; Pull retries.
	ErrBusy = errors.New("busy")
	// ErrProtocol: the peer sent something this protocol does not allow (a
	// malformed frame, a name that is not one path component, a link to
	// something it did not send...): not a Berth peer, or a hostile one.
	ErrProtocol = errors.New("protocol violation")
	// ErrExists: the destination exists already (and is not this transfer's
	// completed copy), or the staging directory belongs to another source.
	ErrExists = errors.New("destination exists")
	// ErrServer: the server failed for a reason of its own.
	ErrServer = errors.New("server error")
	// ErrTooLarge: the source holds more data than the client accepts.
	ErrTooLarge = errors.New("more data than allowed")

	// errOldServer: the server refused the request's protocol version before
	// anything else (a node still running version 1): the pull goes on in
	// version 1 (a delta pull then receives the source whole, in staging, and
	// exchanges it with its base).
	errOldServer = errors.New("the server speaks an older protocol")

	// errSourceChanged: the source changed between two attempts in a way the
	// copy cannot continue from (a link's first name is gone); the client
	// starts over.
	errSourceChanged = errors.New("source changed since the interrupted attempt")
)

// Source is what a Server sends, held for reading until Close.
type Source struct {
	Kind Kind
	// Path is the directory (KindTree) or image file (KindImage). The directory
	// is a tree a pod may have filled with anything; the path up to it is
	// trusted.
	Path       string
	SizeBytes  int64
	FSType     string
	AccessType string
	// Generation changes whenever the ID names another object (a volume deleted
	// and made again under the same name): a client never resumes a copy of one
	// from the other.
	Generation string
	// Close, when set, ends the read; an error says the source was not there
	// all along (deleted during the transfer), so the copy must not be used.
	Close func() error
}

// Sources opens what a Server may send, by volume or snapshot ID.
type Sources interface {
	Open(ctx context.Context, id string) (*Source, error)
}

// Progress is one transfer's progress, read at any time (by metrics, or a status
// call) while the transfer writes it.
type Progress struct {
	ID   string
	Peer string
	// Sending is true on the server's side.
	Sending bool
	Started time.Time
	// Bytes counts data sent or received (holes excluded), by this attempt and
	// the earlier ones of this Pull; Total is what the whole transfer holds when
	// known (images), else 0.
	Bytes, Total atomic.Int64
	// Entries counts directories, files, links and special files.
	Entries atomic.Int64
	// Resumed adds up the offsets partial files were continued from (bytes the
	// client had, holes included); Resumes counts the attempts that went on from
	// an earlier one.
	Resumed atomic.Int64
	Resumes atomic.Int64
	// Skipped counts, in a delta pull, the bytes not sent because the client's
	// base holds them (unchanged files, equal image chunks).
	Skipped atomic.Int64
}

// Status is a Progress read at one instant.
type Status struct {
	ID, Peer                       string
	Sending                        bool
	Started                        time.Time
	Bytes, Total, Entries, Resumed int64
	Resumes, Skipped               int64
}

// Status reads p.
func (p *Progress) Status() Status {
	return Status{ID: p.ID, Peer: p.Peer, Sending: p.Sending, Started: p.Started, Bytes: p.Bytes.Load(),
		Total: p.Total.Load(), Entries: p.Entries.Load(), Resumed: p.Resumed.Load(), Resumes: p.Resumes.Load(),
		Skipped: p.Skipped.Load()}
}

// Running is the set of transfers under way on one side, for status and metrics
// (the server's sends, a client's pulls). The zero value is ready to use.
type Running struct {
	mu sync.Mutex
	m  map[*Progress]struct{}
}

// Track adds p while on, removes it after.
func (r *Running) Track(p *Progress, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !on {
		delete(r.m, p)
		return
	}
	if r.m == nil {
		r.m = map[*Progress]struct{}{}
	}
	r.m[p] = struct{}{}
}

// Status lists the progress of those under way now.
func (r *Running) Status() []Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Status, 0, len(r.m))
	for p := range r.m {
		out = append(out, p.Status())
	}
	return out
}
