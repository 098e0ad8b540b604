package storage

import (
	"context"
	"sort"
	"strings"
)

// Usage is what a volume holds and may hold.
type Usage struct {
	TotalBytes, UsedBytes, AvailableBytes    int64
	TotalInodes, UsedInodes, AvailableInodes int64
	// BytesOnly: a raw block device, which has no inodes to count.
	BytesOnly bool
}

// Backend is one pool kind. The engine owns names, IDs, records, capacity accounting
// and crash recovery; a backend only knows how to lay out and measure one volume's data
// inside the directory the engine gives it.
type Backend interface {
	// Check reports whether the pool's filesystem can serve this kind (called at start-up).
	Check(ctx context.Context, p *Pool) error
	// Build fills a new volume's directory (still under the pool's tmp/) with its data,
	// sized and shaped as r says. On error the engine discards the directory.
	Build(ctx context.Context, p *Pool, r *Record, volDir string) error
	// Usage measures a committed volume.
	Usage(ctx context.Context, p *Pool, r *Record, volDir string) (Usage, error)
	// SizeStep is the granularity of the kind's volume sizes in bytes (1: exact).
	SizeStep() int64
	// SupportsBlock reports whether raw block volumes can be served.
	SupportsBlock() bool
	// MultiNode reports whether several nodes may use a volume at once (the pool's
	// root is shared by every node).
	MultiNode() bool
	// Expand grows a committed volume's limit or backing store to newBytes. The engine
	// has checked the size and records it once Expand succeeds; Expand must be
	// idempotent (a retry after a crash finds part of the work done).
	Expand(ctx context.Context, p *Pool, r *Record, volDir string, newBytes int64) error
	// Release undoes what Build set up outside the volume's directory (a quota limit...),
	// after the volume has left volumes/.
	Release(ctx context.Context, p *Pool, r *Record) error
	// InUse is ErrInUse when the volume's backing store is busy outside any
	// publication (an image still attached to a loop device), checked before delete.
	InUse(ctx context.Context, p *Pool, r *Record, volDir string) error
	// Full reports a volume at the limit its kind enforces (false where none is).
	Full(ctx context.Context, p *Pool, r *Record, volDir string) (bool, error)
	// Data is the name of what holds the volume's data inside its directory, and
	// whether it is a directory (else a regular file).
	Data() (name string, isDir bool)
	// Params lists the StorageClass parameters this kind understands, besides "pool".
	Params() []string
	// Filesystems lists the filesystems a mount volume of the kind is formatted with,
	// its default first; none when its volumes live on the pool's own filesystem.
	Filesystems() []string

	// NodeBackend is the node-side half of the kind (node.go).
	NodeBackend
}

// backends maps a kind name to its implementation; each kind registers itself.
var backends = map[string]func(PoolConfig, Host) Backend{}

func knownKinds() string {
	var ks []string
	for k := range backends {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}
