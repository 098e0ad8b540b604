package driver

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/berth-csi/berth/pkg/grouplabel"
	"github.com/berth-csi/berth/pkg/orphans"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/version"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/dynamic"
	"k8s.io/klog/v2"
)

// GroupLabellerCommand is the subcommand of the driver binary that labels the
// node's VolumeGroupSnapshotContents for its csi-snapshotter (the chart's
// group-labeller container, with sidecars.snapshotter.groupSnapshots).
const GroupLabellerCommand = "group-labeller"

// GroupLabeller is `csi-driver group-labeller --node-name N [--driver-name D]
// [--page-size 500]`. It labels snapshot.storage.kubernetes.io/managed-by=N the
// VolumeGroupSnapshotContents of the driver whose volumes are all on node N, so
// that the node's csi-snapshotter (--node-deployment) takes them
// (pkg/grouplabel). Like the pv-lister it calls the API with the pod's
// service-account token from a container of its own, unprivileged, and talks to
// nothing else. It runs until ctx ends.
func GroupLabeller(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet(GroupLabellerCommand, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	node := fs.String("node-name", "", "this node's name, as csi-snapshotter's NODE_NAME and the driver's --node-id (required)")
	driver := fs.String("driver-name", "berth.csi.io", "CSI driver name: the contents whose spec.driver it is are labelled")
	pageSize := fs.Int64("page-size", orphans.DefaultPageSize, "PersistentVolumes per List request, 1 to 10000")
	format := fs.String("logging-format", "text", "log format: text or json")
	shared := fs.String("shared-pools", "", "comma-separated shared pools this node serves: pre-provisioned VolumeSnapshotContents of their snapshots (restores of backups) are labelled for the first node that gets to them")
	groups := fs.Bool("group-snapshots", true, "label VolumeGroupSnapshotContents (false: the cluster has no group snapshots; only pre-provisioned contents of --shared-pools are labelled)")
	klog.InitFlags(fs)
	if err := parseAPIFlags(fs, args, driver); err != nil {
		return err
	}
	switch {
	case *node == "":
		return errors.New("--node-name is required")
	case len(validation.IsValidLabelValue(*node)) > 0:
		return fmt.Errorf("--node-name %q: not a label value: %s", *node, strings.Join(validation.IsValidLabelValue(*node), "; "))
	case *pageSize < 1 || *pageSize > 10000:
		return fmt.Errorf("--page-size %d: must be from 1 to 10000", *pageSize)
	}
	if err := checkLoggingFormat(*format); err != nil {
		return err
	}
	var sharedPools []string
	if *shared != "" {
		sharedPools = strings.Split(*shared, ",")
		for _, p := range sharedPools {
			if err := storage.ValidatePoolName(p); err != nil {
				return fmt.Errorf("--shared-pools: %w", err)
			}
		}
	}
	setLoggingFormat(*format)
	cfg, err := inClusterConfig("group-labeller")
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("API client: %w", err)
	}
	pvs, err := orphans.NewPVClient(cfg)
	if err != nil {
		return err
	}
	events, err := grouplabel.NewEventClients(cfg)
	if err != nil {
		return err
	}
	l := &grouplabel.Labeller{
		Contents:    dyn.Resource(grouplabel.ContentResource),
		Members:     dyn.Resource(grouplabel.MemberResource),
		PVs:         pvs,
		Events:      events,
		Driver:      *driver,
		Node:        *node,
		PageSize:    *pageSize,
		SharedPools: sharedPools,
		NoGroups:    !*groups,
	}
	klog.FromContext(ctx).Info("Starting the group-labeller", "version", version.Get())
	return l.Run(ctx, grouplabel.DefaultTiming)
}
