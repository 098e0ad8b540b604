package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/transfer"
)

// remotePeers is the engine's storage.Remote: it asks where a source lives (the
// pv-lister's lookup through the API server) and pulls it from that node's plugin
// over the transfer channel, at the port this node serves on (the chart gives
// every node the same).
type remotePeers struct {
	self  string // this node: a source "found" here is one this node lost
	port  string
	iss   *transfer.Issuer
	where func(ctx context.Context, id string) (storage.Peer, error)

	pulls transfer.Running // for the metrics
}

var _ storage.DeltaRemote = (*remotePeers)(nil)

// pullProgressInterval is how often a pull's progress reaches the engine (the
// figure the copy's metrics and its retries' answers show).
const pullProgressInterval = time.Second

// Locate implements storage.Remote.
func (r *remotePeers) Locate(ctx context.Context, src *storage.Source) (storage.Peer, error) {
	p, err := r.where(ctx, src.ID)
	switch {
	case err != nil:
		return storage.Peer{}, err
	case p.Node == r.self:
		return storage.Peer{}, fmt.Errorf("%s %s belongs to this node, %s, whose pool does not hold it: %w",
			src.Kind, src.ID, r.self, storage.ErrNotFound)
	case p.Address == "":
		return storage.Peer{}, fmt.Errorf("node %s, which holds %s %s, has no address", p.Node, src.Kind, src.ID)
	}
	return p, nil
}

// Fetch implements storage.Remote.
func (r *remotePeers) Fetch(ctx context.Context, src *storage.Source, peer storage.Peer, dest string, maxBytes int64, progress func(int64)) (*storage.Fetched, error) {
	return r.pull(ctx, peer, transfer.PullOptions{ID: src.ID, Dest: dest, MaxBytes: maxBytes}, progress)
}

// FetchDelta implements storage.DeltaRemote: a delta pull (transfer.PullOptions.Base).
func (r *remotePeers) FetchDelta(ctx context.Context, src *storage.Source, peer storage.Peer, base, staging string, from storage.Pulled, maxBytes int64, progress func(int64)) (*storage.Fetched, error) {
	return r.pull(ctx, peer, transfer.PullOptions{ID: src.ID, Base: base, Staging: staging, BaseGeneration: from.Generation,
		BaseSince: from.Since, MaxBytes: maxBytes}, progress)
}

// pull runs o against peer's plugin, telling progress the bytes received.
func (r *remotePeers) pull(ctx context.Context, peer storage.Peer, o transfer.PullOptions, progress func(int64)) (*storage.Fetched, error) {
	cfg, err := r.iss.ClientTLS(peer.Node)
	if err != nil {
		return nil, err
	}
	prog := &transfer.Progress{}
	r.pulls.Track(prog, true)
	defer r.pulls.Track(prog, false)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if progress != nil {
		wg.Go(func() {
			t := time.NewTicker(pullProgressInterval)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					progress(prog.Bytes.Load())
				}
			}
		})
	}
	o.Addr, o.TLS, o.Progress = net.JoinHostPort(peer.Address, r.port), cfg, prog
	res, err := transfer.Pull(ctx, o)
	close(stop)
	wg.Wait()
	if err != nil {
		return nil, pullError(err)
	}
	if progress != nil {
		progress(res.Bytes)
	}
	return &storage.Fetched{Tree: res.Kind == transfer.KindTree, SizeBytes: res.SizeBytes,
		AccessType: res.AccessType, FSType: res.FSType, Generation: res.Generation, Since: res.ServerTime,
		Bytes: res.Bytes, Skipped: res.SkippedBytes, Delta: res.Delta}, nil
}

// pullError gives a failed pull the engine's meaning, so that the CreateVolume
// retried after it answers with the right code.
func pullError(err error) error {
	switch {
	case errors.Is(err, transfer.ErrNotBase):
		return fmt.Errorf("%w: %w", storage.ErrNotBase, err)
	case errors.Is(err, transfer.ErrNotFound):
		return fmt.Errorf("%w: %w", storage.ErrNotFound, err)
	case errors.Is(err, transfer.ErrTooLarge):
		return fmt.Errorf("%w: %w", storage.ErrOutOfRange, err)
	case errors.Is(err, transfer.ErrRefused):
		return fmt.Errorf("%w: the other node's plugin refused this one (transfer CAs differ?): %w", storage.ErrPrecondition, err)
	default:
		// Busy, unreachable, interrupted past its retries: the next CreateVolume
		// starts again.
		return fmt.Errorf("%w: %w", storage.ErrNotReady, err)
	}
}
