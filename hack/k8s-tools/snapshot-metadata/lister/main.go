// Command snapshot-metadata-lister is a backup application's side of changed-block
// tracking, as small as it can be: it asks the external-snapshot-metadata sidecar of a
// VolumeSnapshot's driver for the snapshot's allocated blocks, or for the blocks that
// changed since an earlier snapshot of the same volume, through the sidecar project's
// own client library (pkg/iterator: it finds the driver's SnapshotMetadataService
// object, asks the API server for a token with the object's audience, dials the
// object's address over TLS with its CA) and prints the answers as one JSON list.
// Upstream's example command is not served by the Go module proxy; this one is
// Berth's, for the e2e test of the sidecar (test/e2e TestSnapshotMetadata).
//
//	snapshot-metadata-lister -n NAMESPACE -s SNAPSHOT [-p PREVIOUS-SNAPSHOT] [-kubeconfig FILE]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	smsclient "github.com/kubernetes-csi/external-snapshot-metadata/client/clientset/versioned"
	"github.com/kubernetes-csi/external-snapshot-metadata/pkg/iterator"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	var args iterator.Args
	var kubeconfig string
	flag.StringVar(&args.Namespace, "n", "", "the VolumeSnapshots' namespace")
	flag.StringVar(&args.SnapshotName, "s", "", "the VolumeSnapshot whose blocks are listed")
	flag.StringVar(&args.PrevSnapshotName, "p", "", "an earlier VolumeSnapshot of the same volume: list only the blocks changed since it")
	flag.Int64Var(&args.StartingOffset, "o", 0, "the byte offset to start at")
	flag.Var(maxResults{&args.MaxResults}, "max-results", "the most block ranges in one answer (0: the driver's choice)")
	flag.StringVar(&kubeconfig, "kubeconfig", "", "a kubeconfig file (default: the pod's service account)")
	flag.Parse()
	if flag.NArg() != 0 {
		fail(fmt.Errorf("unexpected arguments %q", flag.Args()))
	}
	cfg, err := config(kubeconfig)
	if err != nil {
		fail(err)
	}
	if args.KubeClient, err = kubernetes.NewForConfig(cfg); err != nil {
		fail(err)
	}
	if args.SnapshotClient, err = snapclient.NewForConfig(cfg); err != nil {
		fail(err)
	}
	if args.SmsCRClient, err = smsclient.NewForConfig(cfg); err != nil {
		fail(err)
	}
	args.Emitter = &iterator.JSONEmitter{Writer: os.Stdout}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := iterator.GetSnapshotMetadata(ctx, args); err != nil {
		fail(err)
	}
	fmt.Println()
}

func config(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		return rest.InClusterConfig()
	}
	return clientcmd.BuildConfigFromFlags("", kubeconfig)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "snapshot-metadata-lister:", err)
	os.Exit(1)
}

// maxResults is the -max-results flag, an int32 (flag has no Int32Var).
type maxResults struct{ v *int32 }

func (m maxResults) String() string {
	if m.v == nil {
		return "0"
	}
	return fmt.Sprint(*m.v)
}

func (m maxResults) Set(s string) error {
	_, err := fmt.Sscan(s, m.v)
	return err
}
