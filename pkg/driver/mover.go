package driver

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/berth-csi/berth/pkg/mover"
	"github.com/berth-csi/berth/pkg/version"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
)

// MoverCommand is the subcommand of the driver binary that runs the VolumeMoves
// (pkg/mover): the chart's mover Deployment, one replica.
const MoverCommand = "mover"

// Mover is `csi-driver mover [--driver-name D] [--workers 4] [--resync-interval
// 1m] [--logging-format text] [-v N]`. It moves claims of node-local pools between
// nodes as the VolumeMoves of every namespace ask, several at once, until ctx
// ends. It calls the API with the pod's service-account token and talks to
// nothing else; the node plugins do the copying.
func Mover(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet(MoverCommand, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	driver := fs.String("driver-name", "berth.csi.io", "CSI driver name: the claims whose PVs are of it are moved")
	workers := fs.Int("workers", 4, "moves run at once, 1 to 64")
	resync := fs.Duration("resync-interval", time.Minute, "how often every unfinished VolumeMove is listed again, besides the watch (at least 10s)")
	image := fs.String("image", "", "the driver's image, run by the read-back pod of a claim moved without pods, whose source is then deleted (empty: such a claim's source PV is kept, Retain)")
	format := fs.String("logging-format", "text", "log format: text or json")
	klog.InitFlags(fs)
	if err := parseAPIFlags(fs, args, driver); err != nil {
		return err
	}
	switch {
	case *workers < 1 || *workers > 64:
		return fmt.Errorf("--workers %d: must be from 1 to 64", *workers)
	case *resync < 10*time.Second:
		return fmt.Errorf("--resync-interval %s: must be at least 10s", *resync)
	}
	if err := checkLoggingFormat(*format); err != nil {
		return err
	}
	setLoggingFormat(*format)
	cfg, err := inClusterConfig("mover")
	if err != nil {
		return err
	}
	m, err := newMover(cfg, *driver, *image)
	if err != nil {
		return fmt.Errorf("API client: %w", err)
	}
	klog.FromContext(ctx).Info("Starting the mover", "version", version.Get())
	return m.Run(ctx, *workers, *resync)
}

// newMover builds the clients: REST clients of the few API groups the mover uses
// (mover.NewCluster; not the clientset, which would register them all in the
// binary) and the dynamic client of the VolumeMoves.
func newMover(cfg *rest.Config, driver, image string) (*mover.Mover, error) {
	// client-go's default pace (5 calls a second, bursts of 10, per client) held the
	// calls of a move's switch back by seconds while its pods were down; a move makes
	// a few calls every 250 ms at most, and moves run few at a time (--workers).
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 50, 100
	cluster, err := mover.NewCluster(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &mover.Mover{Cluster: cluster, Dynamic: dyn, Driver: driver, Image: image,
		Poll: mover.DefaultPoll, CleanupWait: mover.DefaultCleanupWait}, nil
}
