// Command kubectl-berth is the kubectl plugin `kubectl berth` (pkg/kubectlberth).
// Exit codes: 0 fine, 1 doctor found something that needs attention, 2 an error.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/berth-csi/berth/pkg/kubectlberth"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	cmd := kubectlberth.NewCommand(kubectlberth.Streams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
	err := cmd.ExecuteContext(ctx)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, kubectlberth.ErrAttention):
		os.Exit(1)
	default:
		fmt.Fprintf(os.Stderr, "kubectl berth: %v\n", err)
		os.Exit(2)
	}
}
