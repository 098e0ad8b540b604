package transfer

import (
	"context"
	"errors"
	"fmt"

	"github.com/berth-csi/berth/pkg/storage"
)

// EngineSources serves the volumes and snapshots of a storage engine, each held
// open (and so not deletable on this node) while it is sent.
func EngineSources(e *storage.Engine) Sources { return engineSources{e} }

type engineSources struct{ e *storage.Engine }

func (s engineSources) Open(ctx context.Context, id string) (*Source, error) {
	x, err := s.e.Export(ctx, id)
	switch {
	case err == nil:
	case errors.Is(err, storage.ErrNotFound), errors.Is(err, storage.ErrInvalid):
		return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
	case errors.Is(err, storage.ErrPrecondition), errors.Is(err, storage.ErrNotReady):
		// A snapshot still being copied, a pool not served right now: later.
		return nil, fmt.Errorf("%w: %w", ErrBusy, err)
	default:
		return nil, err
	}
	k := KindImage
	if x.Tree {
		k = KindTree
	}
	return &Source{Kind: k, Path: x.Path, SizeBytes: x.SizeBytes, FSType: x.FSType, AccessType: x.AccessType,
		Generation: x.Generation, Close: x.Close}, nil
}
