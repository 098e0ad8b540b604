package driver

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/berth-csi/berth/pkg/server"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// TrashOrphanCommand is the subcommand of the driver binary that moves one orphaned
// volume into its pool's trash (kubectl berth doctor --fix runs it in the node
// plugin's driver container).
const TrashOrphanCommand = "trash-orphan"

// ErrRefused: trash-orphan left the volume where it is (published, or not held by
// this driver). The command exits 3 then, 1 on other failures.
var ErrRefused = errors.New("refused")

// TrashOrphan is `csi-driver trash-orphan --volume-id ID [--endpoint E]`. It asks the
// driver already running in this container, through its CSI socket, rather than
// opening the pool itself: the running driver holds the volume locks, the index and
// the publication table (rebuilt from the mount table at its start), and a second
// engine reconciling the same pool would roll back its creations in progress. So the
// deletion is the driver's own DeleteVolume (Engine.DeleteVolume: a volume published
// on this node is refused, an image still attached to a loop device too; the rest is
// an atomic rename into the pool's trash, which the driver purges in the background).
// Before it, ControllerGetVolume must find the volume here and published nowhere:
// DeleteVolume alone would take an unknown ID for success.
func TrashOrphan(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet(TrashOrphanCommand, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	endpoint := fs.String("endpoint", "unix:///csi/csi.sock", "the running driver's CSI endpoint")
	id := fs.String("volume-id", "", "ID of the volume to move to its pool's trash (required)")
	timeout := fs.Duration("timeout", time.Minute, "bound of the whole operation")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stderr)
			fs.PrintDefaults()
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if *id == "" {
		return errors.New("--volume-id is required")
	}
	sock, err := server.ParseEndpoint(*endpoint)
	if err != nil {
		return fmt.Errorf("--endpoint: %w", err)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connect to the driver at %s: %w", sock, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	ctrl := csi.NewControllerClient(conn)

	got, err := ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: *id})
	switch status.Code(err) {
	case codes.OK:
	case codes.NotFound, codes.InvalidArgument:
		return fmt.Errorf("volume %s: no such volume in this driver's pools: %w", *id, ErrRefused)
	default:
		return fmt.Errorf("volume %s: %w", *id, err)
	}
	if nodes := got.GetStatus().GetPublishedNodeIds(); len(nodes) > 0 {
		return fmt.Errorf("volume %s is published on %v: %w", *id, nodes, ErrRefused)
	}
	_, err = ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: *id})
	switch status.Code(err) {
	case codes.OK:
	case codes.FailedPrecondition:
		// ErrInUse (published or staged) and ErrPrecondition (a pool this driver
		// does not serve) both map here: the volume stays.
		return fmt.Errorf("volume %s: %s: %w", *id, status.Convert(err).Message(), ErrRefused)
	default:
		return fmt.Errorf("volume %s: %w", *id, err)
	}
	fmt.Fprintf(out, "volume %s moved to the trash of pool %s\n", *id, got.GetVolume().GetVolumeContext()["pool"])
	return nil
}
