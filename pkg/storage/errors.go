package storage

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Sentinel errors returned (wrapped) by the engine. The CSI handlers map them to
// gRPC codes in one place (pkg/csierr); nobody matches error strings.
var (
	// ErrInvalid: the request can never succeed as given (bad name, ID, size, parameter).
	ErrInvalid = errors.New("invalid argument")
	// ErrNotFound: the volume, snapshot or pool does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: an object with this name exists with incompatible properties.
	ErrExists = errors.New("already exists with different properties")
	// ErrNoSpace: the pool has not enough free capacity right now.
	ErrNoSpace = errors.New("not enough free capacity")
	// ErrOutOfRange: the size can never be served by this pool (or would shrink a volume).
	ErrOutOfRange = errors.New("size out of range")
	// ErrInUse: the volume is published and cannot be deleted.
	ErrInUse = errors.New("volume is in use")
	// ErrUnsupported: the pool kind cannot do what was asked (block on a dir pool...).
	ErrUnsupported = errors.New("not supported by this pool")
	// ErrPrecondition: the system is not in a state that allows the operation
	// (a host directory that may not be adopted, a volume not ready to copy...).
	ErrPrecondition = errors.New("failed precondition")
	// ErrNotReady: the pool or object is not ready to serve yet.
	ErrNotReady = errors.New("not ready")
)

// ErrBusy: another process or host holds the lock of the object (shared pools); the
// caller retries.
var ErrBusy = errors.New("locked by another operation")

// ErrInProgress: the work asked for runs in the background (a volume's content is
// still being copied) and is not done yet; the caller retries.
var ErrInProgress = errors.New("in progress")

// ErrBadToken: a listing's starting token is not one the engine hands out; the
// caller starts the listing over.
var ErrBadToken = errors.New("invalid starting token")

// ErrUnreachable: no topology the request requires can reach the volume (a node-local
// pool's volume asked for on another node).
var ErrUnreachable = errors.New("not accessible from the required topology")

// ErrPoolNotConfigured: an ID names a pool this process does not have. It is an
// ErrNotFound for lookups, but this process cannot tell whether the object exists
// (a central controller serves only the shared pools; the node that holds a
// node-local pool does), so deletions must not take it for "already gone".
var ErrPoolNotConfigured = fmt.Errorf("pool %w", ErrNotFound)

// Sentinels of the node side.
var (
	// ErrNotStaged: a publish or an expansion needs the volume staged first.
	ErrNotStaged = errors.New("volume not staged")
	// ErrStaleMount: the filesystem holding the volume no longer answers (a dead
	// FUSE client, a lost NFS server); NodeStageVolume remounts it.
	ErrStaleMount = errors.New("stale mount")
)

// codedError is an error whose message is its own and that matches a sentinel, so
// the engine can say what went wrong in plain words and still be mapped to a code.
type codedError struct {
	sentinel error
	cause    error
}

func (e *codedError) Error() string        { return e.cause.Error() }
func (e *codedError) Unwrap() []error      { return []error{e.sentinel, e.cause} }
func (e *codedError) Is(target error) bool { return target == e.sentinel }

// errorf formats an error that matches sentinel (and whatever the format wraps with
// %w) without naming the sentinel in its message.
func errorf(sentinel error, format string, args ...any) error {
	return &codedError{sentinel: sentinel, cause: fmt.Errorf(format, args...)}
}

// The steps of a build an out-of-space error names (noSpace).
const (
	stepBuild  = "build"
	stepCopy   = "copy"
	stepRecord = "record"
)

// noSpace marks err as ErrNoSpace when the filesystem refused the step for want of
// space or quota (ENOSPC, EDQUOT), naming the pool and the step; any other error
// passes unchanged. The caller rolls the step back as for any other error.
func (p *Pool) noSpace(step string, err error) error {
	if err == nil || errors.Is(err, ErrNoSpace) || !(errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)) {
		return err
	}
	return errorf(ErrNoSpace, "pool %s is out of space (%s): %w", p.cfg.Name, step, err)
}
