package transfer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/berth-csi/berth/pkg/storage/meta"
	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Defaults of PullOptions.
const (
	DefaultRetries            = 8
	DefaultRetryWait          = time.Second
	DefaultCheckpointInterval = 10 * time.Second
	maxRetryWait              = 30 * time.Second
	dialTimeout               = 10 * time.Second
)

// PullOptions say what to pull from where, and into what.
type PullOptions struct {
	// Addr is the server's host:port.
	Addr string
	// TLS is the client side of mutual TLS (ClientTLS makes it): this node's
	// certificate, the CA, and the server's name.
	TLS *tls.Config
	// ID is the volume or snapshot to pull.
	ID string
	// Dest is the absolute path to create: a directory (a tree) or a file (an
	// image). It must not exist. It appears only once the copy is complete and
	// flushed.
	Dest string
	// Staging is where the copy is made (default: ".<name>.transfer" beside
	// Dest; it must be on Dest's filesystem). A later Pull of the same ID into
	// the same Dest resumes from what it holds.
	Staging string
	// MaxBytes, when positive, refuses (ErrTooLarge) a source with more data,
	// or an image larger than this.
	MaxBytes int64
	// RateLimit, when positive, asks the server to send at most this many
	// bytes a second (its own limit applies as well).
	RateLimit int64
	// Retries is how many interrupted attempts in a row (without progress
	// between them) are resumed (0: DefaultRetries; negative: none), waiting
	// RetryWait (0: DefaultRetryWait), doubled each time up to 30 s, before each.
	Retries   int
	RetryWait time.Duration
	// CheckpointInterval is how often the staging copy is flushed and its state
	// saved (0: DefaultCheckpointInterval): what a crash of this side may cost.
	CheckpointInterval time.Duration
	// IdleTimeout gives up an attempt whose server sends nothing for this long
	// (0: DefaultIdleTimeout).
	IdleTimeout time.Duration
	// LogInterval is how often progress is logged at V(2) (0: DefaultLogInterval).
	LogInterval time.Duration
	// Progress, when set, is kept up to date (the caller may read it from
	// another goroutine).
	Progress *Progress

	// Base, when set, makes the Pull a delta pull (delta.go): Base is a
	// complete copy of the source ID that an earlier Pull made (its Result's
	// Generation is BaseGeneration, its ServerTime BaseSince), and it is
	// brought up to date in place; Dest must be empty or Base. A tree is built
	// in staging, taking the files unchanged since BaseSince from Base by hard
	// link, and exchanged with Base at once; an image is patched in place. When
	// the source is no longer of BaseGeneration, it is received in full into
	// staging and exchanged all the same. A Base that proves not to be such a
	// copy fails the Pull with ErrNotBase (the caller pulls in full). A delta
	// pull is never resumed: each attempt starts over, and leftovers of an
	// interrupted one are removed first.
	Base           string
	BaseGeneration string
	BaseSince      time.Time

	// proto is the protocol version requests are made in: protocolVersion,
	// or 1 once a server refused it (a node not upgraded yet).
	proto uint64
}

// Result is what a completed Pull made.
type Result struct {
	Kind       Kind
	SizeBytes  int64
	FSType     string
	AccessType string
	// Bytes is the data received over every attempt; Attempts the connections
	// it took.
	Bytes    int64
	Attempts int
	// Generation is the source's; ServerTime the server's clock when it began
	// reading the source for this copy: what a later delta pull of the same
	// source takes as BaseGeneration and BaseSince.
	Generation string
	ServerTime time.Time
	// Delta: the pull was a delta against Base; SkippedBytes is what it did
	// not need to receive.
	Delta        bool
	SkippedBytes int64
}

// Pull copies the source o.ID from the server at o.Addr to o.Dest, resuming
// after interruptions, and commits the copy (a rename) only once it is
// complete and flushed. An error that another attempt could overcome (the
// connection dropped and the retries ran out, the server busy, ctx ended) leaves
// the staging directory for a later Pull to resume; any other (the source gone,
// refused, a protocol violation) removes it.
func Pull(ctx context.Context, o PullOptions) (*Result, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	logger := klog.FromContext(ctx).WithValues("volumeID", o.ID, "peer", o.Addr)
	ctx = klog.NewContext(ctx, logger)
	if err := mkdirStaging(o.Staging); err != nil {
		return nil, err
	}
	st, err := loadState(o.Staging)
	if err != nil {
		return nil, err
	}
	if st == nil || o.Base != "" {
		if o.Base != "" {
			// A delta pull starts over: what an interrupted one left goes
			// (the staging directory itself stays, with what the caller set
			// on it, such as a quota project).
			if err := wipe(o.Staging, &state{Version: stateVersion, ID: o.ID}); err != nil {
				return nil, err
			}
		}
		st = &state{Version: stateVersion, ID: o.ID}
	}
	if st.ID != o.ID {
		return nil, fmt.Errorf("staging %s holds a copy of %s, not %s: %w", o.Staging, st.ID, o.ID, ErrExists)
	}
	res := &Result{}
	if !st.Complete {
		if _, err := os.Lstat(o.Dest); err == nil && o.Base == "" {
			return nil, fmt.Errorf("%s: %w", o.Dest, ErrExists)
		}
		if err := pullAttempts(ctx, &o, st, res); err != nil {
			return nil, err
		}
	}
	commitf := commit
	if o.Base != "" {
		commitf = commitDelta
	}
	if err := commitf(&o, st); err != nil {
		return nil, err
	}
	res.Kind, res.SizeBytes, res.FSType, res.AccessType, res.Bytes = st.Kind, st.SizeBytes, st.FSType, st.AccessType, st.Bytes
	res.Generation, res.Delta, res.SkippedBytes = st.Generation, st.Delta, st.Skipped
	if st.ServerTime != 0 {
		res.ServerTime = time.Unix(0, st.ServerTime)
	}
	logger.V(2).Info("Transfer received", "dest", o.Dest, "bytes", st.Bytes, "skippedBytes", st.Skipped,
		"delta", st.Delta, "attempts", res.Attempts)
	return res, nil
}

func (o *PullOptions) defaults() error {
	switch {
	case o.Addr == "":
		return errors.New("transfer: no server address")
	case o.TLS == nil || (len(o.TLS.Certificates) == 0 && o.TLS.GetClientCertificate == nil):
		return errors.New("transfer: a TLS configuration with this node's certificate is required")
	case o.ID == "" || checkName(o.ID) != nil:
		return fmt.Errorf("transfer: source ID %q", o.ID)
	case o.Base != "" && o.Dest != "" && o.Dest != o.Base:
		return fmt.Errorf("transfer: a delta pull updates its base %q, not %q", o.Base, o.Dest)
	}
	if o.Base != "" {
		o.Dest = o.Base
	}
	switch {
	case !filepath.IsAbs(o.Dest) || filepath.Clean(o.Dest) != o.Dest || o.Dest == "/":
		return fmt.Errorf("transfer: destination %q is not a clean absolute path", o.Dest)
	}
	if o.Staging == "" {
		o.Staging = filepath.Join(filepath.Dir(o.Dest), "."+filepath.Base(o.Dest)+".transfer")
	}
	if o.Retries == 0 {
		o.Retries = DefaultRetries
	}
	if o.RetryWait <= 0 {
		o.RetryWait = DefaultRetryWait
	}
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = DefaultCheckpointInterval
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.LogInterval <= 0 {
		o.LogInterval = DefaultLogInterval
	}
	if o.Progress == nil {
		o.Progress = &Progress{}
	}
	o.proto = protocolVersion
	o.Progress.ID, o.Progress.Peer, o.Progress.Started = o.ID, o.Addr, time.Now()
	return nil
}

// mkdirStaging makes the staging directory, or finds the one an earlier Pull
// left (a directory, not a symlink).
func mkdirStaging(dir string) error {
	err := os.Mkdir(dir, 0o700)
	if errors.Is(err, os.ErrExist) {
		fi, lerr := os.Lstat(dir)
		if lerr != nil {
			return lerr
		}
		if !fi.IsDir() {
			return fmt.Errorf("staging %s is not a directory: %w", dir, ErrExists)
		}
		return nil
	}
	return err
}

// pullAttempts runs attempts until the copy is complete, resuming after each
// interruption as o allows.
func pullAttempts(ctx context.Context, o *PullOptions, st *state, res *Result) error {
	logger := klog.FromContext(ctx)
	stopLog := logProgress(ctx, o.Progress, o.LogInterval, "Transfer receiving")
	defer stopLog()
	// keep ends the Pull with err, leaving the staged copy for a later one (if
	// anything came).
	keep := func(err error) error {
		if !st.Started || o.Base != "" {
			_ = Discard(o.Staging)
			return fmt.Errorf("transfer of %s: %w", o.ID, err)
		}
		return fmt.Errorf("transfer of %s: %w (the staged copy is kept for a later attempt)", o.ID, err)
	}
	wait, retries, restarts := o.RetryWait, 0, 0
	for {
		res.Attempts++
		before := st.Bytes + o.Progress.Entries.Load()
		err := attempt(ctx, o, st)
		if err == nil {
			return nil
		}
		if st.Bytes+o.Progress.Entries.Load() > before {
			// It got somewhere: the retries count failures in a row.
			wait, retries = o.RetryWait, 0
		}
		switch {
		case ctx.Err() != nil:
			logger.V(2).Info("Transfer stopped", "err", err, "bytes", st.Bytes)
			return keep(ctx.Err())
		case errors.Is(err, errOldServer) && o.proto > 1:
			// Version 1 has all a full pull needs but the server's start time
			// (a later resync of this copy then pulls in full).
			logger.V(2).Info("Transfer in protocol version 1: the server speaks no later one", "err", err)
			o.proto = 1
			continue
		case errors.Is(err, errSourceChanged) && restarts < 1:
			restarts++
			logger.V(2).Info("Transfer starting over: the source changed since the interrupted attempt", "err", err)
			if err := wipe(o.Staging, st); err != nil {
				return err
			}
			continue
		case retryable(err) && retries < o.Retries:
			retries++
			logger.V(2).Info("Transfer interrupted, resuming", "err", err, "bytes", st.Bytes, "retryIn", wait)
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return keep(ctx.Err())
			}
			wait = min(2*wait, maxRetryWait)
			continue
		case errors.Is(err, ErrNotFound), errors.Is(err, ErrProtocol), errors.Is(err, ErrTooLarge), errors.Is(err, ErrNotBase),
			errors.Is(err, errOldServer):
			// Nothing a later attempt could use: the source is gone, or what came
			// cannot be trusted.
			if derr := Discard(o.Staging); derr != nil {
				logger.Error(derr, "Cannot remove the staged copy of a failed transfer", "staging", o.Staging)
			}
			return fmt.Errorf("transfer of %s: %w", o.ID, err)
		}
		return keep(err)
	}
}

// retryable reports errors another attempt may not meet: the connection (an
// EOF, a reset, a timeout: any network error but a TLS refusal), a busy server.
func retryable(err error) bool {
	var ne net.Error
	if refusedTLS(err) {
		return false
	}
	return errors.Is(err, ErrBusy) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.As(err, &ne) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

// refusedTLS reports a handshake that failed: the server refused this node's
// certificate (a TLS alert from it), or this node the server's.
func refusedTLS(err error) bool {
	var op *net.OpError
	var verr *tls.CertificateVerificationError
	_, alert := errors.AsType[tls.AlertError](err)
	return alert || errors.As(err, &verr) || (errors.As(err, &op) && op.Op == "remote error")
}

// attempt runs one connection: request, header, records up to the end.
func attempt(ctx context.Context, o *PullOptions, st *state) error {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: dialTimeout, KeepAlive: 15 * time.Second}, Config: o.TLS}
	c, err := d.DialContext(ctx, "tcp", o.Addr)
	if err != nil {
		if refusedTLS(err) {
			err = fmt.Errorf("%w: %w", ErrRefused, err)
		}
		return err
	}
	conn := c.(*tls.Conn)
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	r, err := newReceiver(ctx, o, st, conn)
	if err != nil {
		return err
	}
	defer r.close()
	if err := r.run(); err != nil {
		// What came is kept: the next attempt goes on from it.
		if cerr := r.checkpoint(); cerr != nil {
			klog.FromContext(ctx).Error(cerr, "Cannot save how far an interrupted transfer got")
		}
		return err
	}
	return nil
}

// commit makes a complete copy the destination: rename, then the rename made
// durable, then the staging directory removed. Each step is one a later Pull
// can finish after a crash.
func commit(o *PullOptions, st *state) error {
	from := filepath.Join(o.Staging, stagingData)
	if _, err := os.Lstat(from); errors.Is(err, os.ErrNotExist) {
		// Renamed already, by a Pull that stopped before its clean-up.
		if _, derr := os.Lstat(o.Dest); derr != nil {
			return fmt.Errorf("transfer of %s: staging %s says complete, but neither it nor %s holds the copy: %w",
				o.ID, o.Staging, o.Dest, derr)
		}
	} else {
		err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, o.Dest, unix.RENAME_NOREPLACE)
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("%s: %w", o.Dest, ErrExists)
		}
		if err != nil {
			return fmt.Errorf("commit %s: %w", o.Dest, err)
		}
		if err := meta.SyncDir(filepath.Dir(o.Dest)); err != nil {
			return err
		}
	}
	return Discard(o.Staging)
}

// commitDelta ends a delta pull: a tree (or an image received in full) is
// exchanged with the base, the exchange made durable, and the old copy removed
// with the staging directory; an image patched in place is complete already
// (the end's checkpoint flushed its filesystem).
func commitDelta(o *PullOptions, st *state) error {
	if !(st.Delta && st.Kind == KindImage) {
		from := filepath.Join(o.Staging, stagingData)
		if err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, o.Base, unix.RENAME_EXCHANGE); err != nil {
			return fmt.Errorf("exchange %s with its update: %w", o.Base, err)
		}
		if err := meta.SyncDir(filepath.Dir(o.Base)); err != nil {
			return err
		}
		if err := meta.SyncDir(o.Staging); err != nil {
			return err
		}
	}
	return Discard(o.Staging)
}

// Discard removes a staging directory (what an interrupted Pull left), with no
// symlink followed inside it. A missing one is not an error.
func Discard(staging string) error {
	parent, name := filepath.Split(filepath.Clean(staging))
	if err := safefs.RemoveTree(parent, name); err != nil {
		return err
	}
	return meta.SyncDir(parent)
}

// wipe drops the staged copy and its state: the next attempt starts over.
func wipe(staging string, st *state) error {
	if err := safefs.RemoveTree(staging, stagingData); err != nil {
		return err
	}
	st.Delta, st.Skipped = false, 0
	st.restart()
	return st.save(staging)
}
