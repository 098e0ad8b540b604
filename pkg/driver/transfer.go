package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"

	"github.com/berth-csi/berth/pkg/locate"
	"github.com/berth-csi/berth/pkg/metrics"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/transfer"
)

// DefaultTransferCADir is where the chart mounts the transfer CA's Secret.
const DefaultTransferCADir = "/etc/berth/transfer-ca"

// checkTransfer validates the transfer flags: the channel serves a node's data,
// so only the node service has it.
func (o *Options) checkTransfer(rate string) error {
	n, err := storage.ParseQuantity(rate)
	if err != nil || n < 0 {
		return fmt.Errorf("--transfer-rate-limit %q: must be a non-negative quantity of bytes a second, such as 100Mi", rate)
	}
	o.TransferRateLimit = n
	if o.SnapshotMetadataAddress != "" {
		if o.TransferAddress == "" {
			return fmt.Errorf("--snapshot-metadata-address: needs --transfer-address, whose certificates it uses")
		}
		if err := metrics.CheckAddress(o.SnapshotMetadataAddress); err != nil {
			return fmt.Errorf("--snapshot-metadata-address %w", err)
		}
	}
	if o.TransferAddress == "" {
		return nil
	}
	if o.Mode == ModeController {
		return fmt.Errorf("--transfer-address: the controller holds no node's data; serve the channel with --mode node or all")
	}
	if err := metrics.CheckAddress(o.TransferAddress); err != nil {
		return fmt.Errorf("--transfer-address %w", err)
	}
	if !filepath.IsAbs(o.TransferCADir) {
		return fmt.Errorf("--transfer-ca-dir %q: must be an absolute path", o.TransferCADir)
	}
	return nil
}

// transferChannel is the node's transfer server, listening from start-up and
// serving once the engine knows its volumes, and its client, through which the
// engine pulls the sources other nodes hold.
type transferChannel struct {
	srv   *transfer.Server
	lis   net.Listener
	peers *remotePeers
}

// openTransfer mints the node's certificate and opens the address, so that a
// wrong CA or a taken port fails at start-up; nil when the channel is off.
func openTransfer(o Options, engine *storage.Engine) (*transferChannel, error) {
	if o.TransferAddress == "" {
		return nil, nil
	}
	iss, err := transfer.NewIssuer(o.TransferCADir, o.NodeID)
	if err != nil {
		return nil, fmt.Errorf("--transfer-ca-dir: %w", err)
	}
	srv, err := transfer.NewServer(transfer.ServerOptions{TLS: iss.ServerTLS(), Sources: transfer.EngineSources(engine),
		RateLimit: o.TransferRateLimit})
	if err != nil {
		return nil, err
	}
	lis, err := transfer.Listen(o.TransferAddress)
	if err != nil {
		return nil, fmt.Errorf("--transfer-address: %w", err)
	}
	_, port, _ := net.SplitHostPort(o.TransferAddress)
	lister := locate.NewSocketLocator(o.PVListerEndpoint)
	peers := &remotePeers{self: o.NodeID, port: port, iss: iss,
		where: func(ctx context.Context, id string) (storage.Peer, error) {
			w, err := lister.Locate(ctx, id)
			if errors.Is(err, locate.ErrNotFound) {
				return storage.Peer{}, fmt.Errorf("%w: %w", storage.ErrNotFound, err)
			}
			return storage.Peer{Node: w.Node, Address: w.Address}, err
		}}
	engine.SetRemote(peers)
	return &transferChannel{srv: srv, lis: lis, peers: peers}, nil
}

func (t *transferChannel) serve(ctx context.Context) error { return t.srv.Serve(ctx, t.lis) }

// transfers lists the running transfers, both ways.
func (t *transferChannel) transfers() []transfer.Status {
	return append(t.srv.Transfers(), t.peers.pulls.Status()...)
}
