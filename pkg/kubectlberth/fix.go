package kubectlberth

import (
	"bufio"
	"context"
	"fmt"
	"strings"
)

// trashOrphanExitRefused is csi-driver trash-orphan's exit code for a volume it left
// in place (published or staged on the node, or not the driver's).
const trashOrphanExitRefused = 3

type fixOptions struct{ fix, yes bool }

// fixOrphans offers each orphan for removal: asked on the terminal unless --yes,
// the PersistentVolumes read again right before, then `csi-driver trash-orphan` in
// the driver container of the pod that holds it. A refusal leaves the finding open.
func (o *Options) fixOrphans(ctx context.Context, c *Clients, findings []Finding, opt fixOptions) error {
	in := bufio.NewReader(o.In)
	for i := range findings {
		f := &findings[i]
		if f.Check != CheckOrphan || f.source == nil {
			continue
		}
		if !opt.yes {
			fmt.Fprintf(o.ErrOut, "Move volume %s (pool %s on node %s; %s) to the pool's trash? The driver purges the trash: its data will be deleted. [y/N] ",
				f.Object, f.Pool, f.Node, f.Problem)
			answer, _ := in.ReadString('\n')
			if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
				fmt.Fprintf(o.ErrOut, "Volume %s kept.\n", f.Object)
				continue
			}
		}
		pv, err := pvNaming(ctx, c.Kube, f.Object)
		if err != nil {
			return fmt.Errorf("check the PersistentVolumes before removing %s: %w", f.Object, err)
		}
		if pv != "" {
			fmt.Fprintf(o.ErrOut, "Volume %s kept: PersistentVolume %s names it now.\n", f.Object, pv)
			continue
		}
		s := f.source
		cmd := []string{s.Command, "trash-orphan", "--endpoint", s.Endpoint, "--volume-id", f.Object}
		out, code, err := c.Exec.Exec(ctx, s.Namespace, s.Pod, driverContainer, cmd)
		switch {
		case err != nil:
			return fmt.Errorf("volume %s: %w", f.Object, err)
		case code == trashOrphanExitRefused:
			fmt.Fprintf(o.ErrOut, "Volume %s kept: the driver refused: %s", f.Object, out)
		case code != 0:
			fmt.Fprintf(o.ErrOut, "Volume %s: trash-orphan failed (exit %d): %s", f.Object, code, out)
		default:
			fmt.Fprintf(o.ErrOut, "Volume %s moved to the trash of pool %s on node %s.\n", f.Object, f.Pool, f.Node)
			f.Fixed = true
		}
	}
	return nil
}
