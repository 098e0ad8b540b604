// Command csi-driver is Berth's CSI plugin: flags -> config -> run. No logic here.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/berth-csi/berth/pkg/driver"
	"github.com/berth-csi/berth/pkg/version"
	"k8s.io/klog/v2"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == driver.TrashOrphanCommand {
		trashOrphan(os.Args[2:])
		return
	}
	if len(os.Args) > 1 {
		if run, ok := services[os.Args[1]]; ok {
			serve(os.Args[1], run, os.Args[2:])
			return
		}
	}
	opts, err := driver.ParseFlags(os.Args[0], os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "csi-driver: %v\n", err)
		os.Exit(2)
	}
	if opts.ShowVersion {
		fmt.Println(version.Get())
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := driver.Run(ctx, opts); err != nil {
		klog.Background().Error(err, "Driver failed")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}

// trashOrphan runs `csi-driver trash-orphan`: exit 3 when the volume was refused
// (published, or not this driver's), 1 on any other failure.
func trashOrphan(args []string) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := driver.TrashOrphan(ctx, args, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "csi-driver %s: %v\n", driver.TrashOrphanCommand, err)
		stop()
		if errors.Is(err, driver.ErrRefused) {
			os.Exit(3)
		}
		os.Exit(1)
	}
}

// services are the subcommands that talk to the API until SIGTERM or SIGINT:
// `csi-driver pv-lister`, `group-labeller` and `mover`.
var services = map[string]func(context.Context, []string) error{
	driver.PVListerCommand:      driver.PVLister,
	driver.GroupLabellerCommand: driver.GroupLabeller,
	driver.MoverCommand:         driver.Mover,
}

// serve runs a service until SIGTERM or SIGINT; any failure (an invalid flag, no
// in-cluster configuration, the pv-lister's socket taken) exits 1.
func serve(name string, run func(context.Context, []string) error, args []string) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, args); err != nil {
		fmt.Fprintf(os.Stderr, "csi-driver %s: %v\n", name, err)
		klog.Flush()
		stop()
		os.Exit(1)
	}
	klog.Flush()
}
