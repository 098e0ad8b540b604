package controller

import (
	"context"
	"errors"
	"io"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// MetadataForwarder reaches the SnapshotMetadata service of the node that holds a
// snapshot: a node-local pool's snapshots exist on their node only, while the
// external-snapshot-metadata sidecar may call any node's plugin.
type MetadataForwarder interface {
	// Peer returns a client of the service on the node holding snapshotID, that
	// node's name, and a function that releases the client. An error wrapping
	// storage.ErrNotFound says no other node holds it.
	Peer(ctx context.Context, snapshotID string) (c csi.SnapshotMetadataClient, node string, release func(), err error)
}

// forwards says whether a local answer err is one to ask the snapshot's node about.
func (s *MetadataServer) forwards(err error) bool {
	return s.forward != nil && errors.Is(err, storage.ErrNotFound)
}

// forward opens the call on the node holding id (open) and relays every message it
// answers to send. local is this plugin's own NotFound, the answer when no other
// node holds id. The peer's errors keep their code, their message naming the node.
func forward[T any](ctx context.Context, f MetadataForwarder, id string, local error,
	open func(csi.SnapshotMetadataClient) (func() (*T, error), error), send func(*T) error) error {
	c, node, release, err := f.Peer(ctx, id)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return csierr.Status(local)
	case err != nil:
		return status.Errorf(codes.Unavailable, "snapshot %s is not on this node, and finding the node that holds it failed: %v", id, err)
	}
	defer release()
	recv, err := open(c)
	if err != nil {
		return peerStatus(node, err)
	}
	for {
		m, err := recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return peerStatus(node, err)
		}
		if err := send(m); err != nil {
			return err
		}
	}
}

// peerStatus is a peer's error as this plugin's answer: its code, its message
// prefixed with the node that gave it.
func peerStatus(node string, err error) error {
	st := status.Convert(err)
	return status.Errorf(st.Code(), "node %s: %s", node, st.Message())
}
