package driver

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/berth-csi/berth/pkg/controller"
	"github.com/berth-csi/berth/pkg/locate"
	"github.com/berth-csi/berth/pkg/server"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/transfer"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"k8s.io/klog/v2"
)

// metadataPeers is changed-block tracking between the nodes' plugins: a node-local
// pool's snapshots live on their node, but the external-snapshot-metadata sidecar
// that a backup application reaches may run on any node. Each plugin serves its
// own snapshots' SnapshotMetadata on a listener of its own (mutual TLS with the
// transfer channel's certificates), and forwards the calls it gets on its socket for
// snapshots it does not hold to the plugin of the node that does (found through the
// pv-lister, as pulls are), relaying the answers. Peers never forward: one hop.
type metadataPeers struct {
	srv *grpc.Server
	lis net.Listener
	fwd *metadataForwarder
}

// openMetadataPeers opens the listener, so that a taken port fails at start-up; nil
// when --snapshot-metadata-address is off. tc is the transfer channel, whose
// certificates and pv-lister it shares.
func openMetadataPeers(o Options, engine *storage.Engine, tc *transferChannel) (*metadataPeers, error) {
	if o.SnapshotMetadataAddress == "" {
		return nil, nil
	}
	_, port, _ := net.SplitHostPort(o.SnapshotMetadataAddress)
	lis, err := net.Listen("tcp", o.SnapshotMetadataAddress)
	if err != nil {
		return nil, fmt.Errorf("--snapshot-metadata-address: %w", err)
	}
	// The socket's stream interceptor: request IDs, sanitised logs, a panic answered
	// Internal rather than ending the plugin.
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tc.peers.iss.ServerTLS())),
		grpc.ChainStreamInterceptor(server.StreamInterceptor()))
	csi.RegisterSnapshotMetadataServer(srv, controller.NewMetadata(engine))
	return &metadataPeers{srv: srv, lis: lis, fwd: &metadataForwarder{self: o.NodeID, port: port, iss: tc.peers.iss,
		where: locate.NewSocketLocator(o.PVListerEndpoint)}}, nil
}

// serve answers the peers until ctx ends; called once the engine knows its
// snapshots (before that a snapshot it holds would be NotFound).
func (m *metadataPeers) serve(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		m.srv.Stop()
	}()
	if err := m.srv.Serve(m.lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// metadataForwarder is the controller's MetadataForwarder between the nodes.
type metadataForwarder struct {
	self  string // this node: a snapshot "found" here is one its pools do not hold
	port  string // every node's peer port (the chart gives all the same)
	iss   *transfer.Issuer
	where locate.Locator
}

var _ controller.MetadataForwarder = (*metadataForwarder)(nil)

// Peer implements controller.MetadataForwarder.
func (f *metadataForwarder) Peer(ctx context.Context, id string) (csi.SnapshotMetadataClient, string, func(), error) {
	w, err := f.where.Locate(ctx, id)
	switch {
	case errors.Is(err, locate.ErrNotFound), errors.Is(err, locate.ErrInvalidID):
		return nil, "", nil, fmt.Errorf("%w: %w", storage.ErrNotFound, err)
	case err != nil:
		return nil, "", nil, err
	case w.Node == f.self:
		return nil, "", nil, fmt.Errorf("snapshot %s belongs to this node, %s: %w", id, f.self, storage.ErrNotFound)
	case w.Address == "":
		return nil, "", nil, fmt.Errorf("node %s, which holds snapshot %s, has no address", w.Node, id)
	}
	cfg, err := f.iss.ClientTLS(w.Node)
	if err != nil {
		return nil, "", nil, err
	}
	conn, err := grpc.NewClient(net.JoinHostPort(w.Address, f.port), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return nil, "", nil, err
	}
	klog.FromContext(ctx).V(2).Info("Forwarding a SnapshotMetadata call to the snapshot's node", "snapshotID", id, "node", w.Node)
	return csi.NewSnapshotMetadataClient(conn), w.Node, func() { conn.Close() }, nil
}
