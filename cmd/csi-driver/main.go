// Command csi-driver is Berth's CSI plugin: flags -> config -> run. No logic here.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/berth-csi/berth/pkg/driver"
	"github.com/berth-csi/berth/pkg/version"
	"k8s.io/klog/v2"
)

func main() {
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
