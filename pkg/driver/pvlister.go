package driver

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"

	"github.com/berth-csi/berth/pkg/healthz"
	"github.com/berth-csi/berth/pkg/locate"
	"github.com/berth-csi/berth/pkg/orphans"
	"github.com/berth-csi/berth/pkg/server"
	"github.com/berth-csi/berth/pkg/version"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
)

// PVListerCommand is the subcommand of the driver binary that serves the driver
// what it needs of the API: the listings of the driver's PersistentVolumes for the
// orphan scan, and where a volume or snapshot lives for copies between nodes (the
// chart's pv-lister container).
const PVListerCommand = "pv-lister"

// DefaultPVListerEndpoint is the pv-lister's socket in the chart's node pods: a
// directory that the driver and pv-lister containers alone share.
const DefaultPVListerEndpoint = "unix:///pv-lister/pv-lister.sock"

// PVLister is `csi-driver pv-lister [--endpoint E] [--driver-name N] [--page-size
// 500]`. It serves on a unix socket, at each request, through the API server with
// the pod's service-account token (in-cluster configuration):
//   - GET /volume-handles: the volume handles of the driver's PersistentVolumes,
//     listed page by page; the driver's orphan scan asks once per scan;
//   - GET /locate?id=ID: the node holding a volume or snapshot of the driver and
//     its InternalIP (pkg/locate), from its PersistentVolume or
//     VolumeSnapshotContent, listed page by page, and its Node; the driver asks
//     before pulling a source from another node over the transfer channel.
//
// It is the one part of Berth's node plugin that calls the Kubernetes API, so it
// runs in a container of its own, unprivileged, and the privileged driver container
// holds no token (docs/operations.md, "Privileges of the driver"). It runs until
// ctx ends.
func PVLister(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet(PVListerCommand, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	endpoint := fs.String("endpoint", DefaultPVListerEndpoint, "unix socket to serve on (unix:///path or /path)")
	driver := fs.String("driver-name", "berth.csi.io", "CSI driver name: the PersistentVolumes whose spec.csi.driver it is are listed")
	pageSize := fs.Int64("page-size", orphans.DefaultPageSize, "PersistentVolumes (or VolumeSnapshotContents) per List request, 1 to 10000")
	format := fs.String("logging-format", "text", "log format: text or json")
	klog.InitFlags(fs)
	if err := parseAPIFlags(fs, args, driver); err != nil {
		return err
	}
	if *pageSize < 1 || *pageSize > 10000 {
		return fmt.Errorf("--page-size %d: must be from 1 to 10000", *pageSize)
	}
	if err := checkLoggingFormat(*format); err != nil {
		return err
	}
	sock, err := server.ParseEndpoint(*endpoint)
	if err != nil {
		return fmt.Errorf("--endpoint: %w", err)
	}
	setLoggingFormat(*format)
	cfg, err := inClusterConfig("pv-lister")
	if err != nil {
		return err
	}
	mux, err := pvListerMux(ctx, cfg, *driver, *pageSize)
	if err != nil {
		return err
	}
	lis, err := server.Listen(sock)
	if err != nil {
		return err
	}
	defer lis.Close()
	logger := klog.FromContext(ctx)
	logger.Info("Starting the pv-lister", "version", version.Get(), "driverName", *driver, "pageSize", *pageSize)
	logger.Info("Serving PersistentVolume listings and locations", "address", lis.Addr().String())
	return healthz.ServeHTTP(ctx, lis, mux, 0)
}

// pvListerMux is what the pv-lister serves, through the API server that cfg
// reaches: GET /volume-handles and GET /locate.
func pvListerMux(ctx context.Context, cfg *rest.Config, driver string, pageSize int64) (*http.ServeMux, error) {
	pvs, err := orphans.NewPVClient(cfg)
	if err != nil {
		return nil, err
	}
	contents, err := locate.NewContentClient(cfg)
	if err != nil {
		return nil, err
	}
	nodes, err := locate.NewNodeClient(cfg)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	orphans.ServeVolumeHandles(ctx, mux, orphans.KubeLister{PVs: pvs, Driver: driver, PageSize: pageSize})
	locate.ServeLocate(ctx, mux, locate.KubeLocator{PVs: pvs, Contents: contents, Nodes: nodes, Driver: driver, PageSize: pageSize})
	return mux, nil
}
