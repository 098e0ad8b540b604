package kubectlberth

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/berth-csi/berth/pkg/mover"
	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// move and evacuate make VolumeMoves (pkg/mover) and follow them: the chart's
// mover does the work, so a move goes on if kubectl berth is stopped, and running
// the command again attaches to it.

// ErrMoveFailed: a move ended Failed (or evacuate left claims on the node).
var ErrMoveFailed = errors.New("move failed")

type moveOptions struct {
	to      string
	wait    bool
	timeout time.Duration
}

// MoveReport is a move's structured output.
type MoveReport struct {
	Move            string       `json:"move"`
	Claim           string       `json:"claim"`
	From            string       `json:"from,omitempty"`
	To              string       `json:"to"`
	Phase           mover.Phase  `json:"phase"`
	Reason          string       `json:"reason,omitempty"`
	Message         string       `json:"message,omitempty"`
	StartedAt       *metav1.Time `json:"startedAt,omitempty"`
	StoppedAt       *metav1.Time `json:"stoppedAt,omitempty"`
	SwitchedAt      *metav1.Time `json:"switchedAt,omitempty"`
	RunningAt       *metav1.Time `json:"runningAt,omitempty"`
	FinishedAt      *metav1.Time `json:"finishedAt,omitempty"`
	DowntimeSeconds *int64       `json:"downtimeSeconds,omitempty"`
}

func reportOf(mv *mover.VolumeMove) MoveReport {
	st := mv.Status
	return MoveReport{Move: mv.Namespace + "/" + mv.Name, Claim: mv.Namespace + "/" + mv.Spec.Claim, From: st.SourceNode,
		To: mv.Spec.ToNode, Phase: phaseOf(mv), Reason: st.Reason, Message: st.Message, StartedAt: st.StartedAt,
		StoppedAt: seconds(st.StoppedAt), SwitchedAt: st.SwitchedAt, RunningAt: seconds(st.RunningAt), FinishedAt: st.FinishedAt,
		DowntimeSeconds: st.DowntimeSeconds}
}

// seconds is a status time kept to the microsecond, reported like the others.
func seconds(t *metav1.MicroTime) *metav1.Time {
	if t == nil {
		return nil
	}
	s := metav1.NewTime(t.Truncate(time.Second))
	return &s
}

// phaseOf is the move's phase, Pending before the mover has written one.
func phaseOf(mv *mover.VolumeMove) mover.Phase {
	if mv.Status.Phase == "" {
		return mover.PhasePending
	}
	return mv.Status.Phase
}

func newMoveCommand(o *Options) *cobra.Command {
	var mo moveOptions
	if o.Poll == 0 {
		o.Poll = 2 * time.Second
	}
	cmd := &cobra.Command{
		Use:   "move CLAIM --to NODE",
		Short: "Move a claim of a node-local pool to another node, with its pods",
		Long: `move copies the claim CLAIM to node --to while its pods run, then stops its pods
(scaling their StatefulSet or Deployment to 0), switches the claim to the copy, whose
first start on the new node copies what changed since, starts the pods again and
deletes the old volume. The chart's mover does it, as the VolumeMove named after the
claim says (kubectl get bvm); a finished one of that name is replaced, a running one
is followed. It refuses a claim used by a pod that no StatefulSet or Deployment owns.
The downtime is the pods' stop to their start on the new node.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.runIn(cmd, false, func(ctx context.Context, c *Clients, ns string) error {
				return o.move(ctx, c, ns, args[0], mo)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&mo.to, "to", "", "the node to move the claim to (required)")
	f.BoolVar(&mo.wait, "wait", true, "wait until the move is finished, printing its phases")
	f.DurationVar(&mo.timeout, "timeout", 30*time.Minute, "how long to wait (the move goes on after it)")
	f.DurationVar(&o.Poll, "poll", o.Poll, "how often the move's status is read while waiting")
	_ = cmd.MarkFlagRequired("to")
	cmd.AddCommand(newMoveStatusCommand(o))
	return cmd
}

func (o *Options) move(ctx context.Context, c *Clients, ns, claim string, mo moveOptions) error {
	moves, err := o.runMoves(ctx, c, []movePlan{{ns: ns, claim: claim, to: mo.to}}, 1, mo.wait, false, mo.timeout)
	if moves[0] == nil {
		return err
	}
	r := reportOf(moves[0])
	if werr := o.writeMove(&r); werr != nil {
		return werr
	}
	if err != nil {
		return err // a timeout: the report says where the move is
	}
	if r.Phase == mover.PhaseFailed {
		return fmt.Errorf("%w: %s", ErrMoveFailed, r.Message)
	}
	return nil
}

// movePlan is a claim to move, and where.
type movePlan struct{ ns, claim, to string }

// runMoves makes the plans' moves, at most parallel at once, and with wait follows
// them until all are finished or timeout, printing the phases to ErrOut. Without
// wait it makes them all and returns. A plan refused (another move of its claim
// runs) ends the run, unless keepGoing: its move is then reported Failed.
func (o *Options) runMoves(ctx context.Context, c *Clients, plans []movePlan, parallel int, wait, keepGoing bool, timeout time.Duration) ([]*mover.VolumeMove, error) {
	out := make([]*mover.VolumeMove, len(plans))
	seen := make([]string, len(plans))
	running := map[int]bool{}
	deadline := time.Now().Add(timeout)
	for next := 0; ; {
		for next < len(plans) && (!wait || len(running) < parallel) {
			mv, err := o.startMove(ctx, c, plans[next])
			var refused *recoverError
			switch {
			case keepGoing && errors.As(err, &refused):
				p := plans[next]
				out[next] = mover.New(p.ns, p.claim, p.claim, p.to)
				out[next].Status = mover.Status{Phase: mover.PhaseFailed, Message: refused.msg}
			case err != nil:
				return out, err
			default:
				out[next], running[next] = mv, true
			}
			next++
		}
		if !wait {
			return out, nil
		}
		for i := range running {
			p := plans[i]
			mv, err := getMove(ctx, c, p.ns, p.claim)
			if err != nil {
				return out, err
			}
			out[i] = mv
			if s := string(phaseOf(mv)) + ": " + mv.Status.Message; s != seen[i] {
				seen[i] = s
				fmt.Fprintf(o.ErrOut, "%s/%s %s\n", p.ns, p.claim, s)
			}
			if mv.Status.Phase.Finished() {
				delete(running, i)
			}
		}
		if len(running) == 0 && next == len(plans) {
			return out, nil
		}
		if time.Now().After(deadline) {
			return out, refuse(ErrTimeout, "moves still running after %s; they go on: run the command again to follow them (kubectl berth move status)", timeout)
		}
		select {
		case <-ctx.Done():
			return out, ctx.Err()
		case <-time.After(o.Poll):
		}
	}
}

// startMove makes the VolumeMove of the plan, named after the claim: a finished
// one of that name is replaced, a running one of the same claim and node followed.
func (o *Options) startMove(ctx context.Context, c *Clients, p movePlan) (*mover.VolumeMove, error) {
	r := c.Dynamic.Resource(mover.Resource).Namespace(p.ns)
	old, err := getMove(ctx, c, p.ns, p.claim)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, err
	case !old.Status.Phase.Finished() && (old.Spec.Claim != p.claim || old.Spec.ToNode != p.to):
		return nil, refuse(ErrBadTarget, "VolumeMove %s/%s is moving claim %s to node %s: wait for it (kubectl berth move %s -n %s --to %s)",
			p.ns, old.Name, old.Spec.Claim, old.Spec.ToNode, old.Spec.Claim, p.ns, old.Spec.ToNode)
	case !old.Status.Phase.Finished():
		fmt.Fprintf(o.ErrOut, "VolumeMove %s/%s is running (%s): following it.\n", p.ns, old.Name, phaseOf(old))
		return old, nil
	default:
		pre := metav1.Preconditions{UID: &old.UID}
		if err := r.Delete(ctx, old.Name, metav1.DeleteOptions{Preconditions: &pre}); err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("delete the finished VolumeMove %s/%s: %w", p.ns, old.Name, err)
		}
	}
	u, err := mover.New(p.ns, p.claim, p.claim, p.to).ToUnstructured()
	if err != nil {
		return nil, err
	}
	created, err := r.Create(ctx, u, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("VolumeMove %s/%s is still being deleted (the mover removes its finalizer %s): run the command again", p.ns, p.claim, mover.Finalizer)
	}
	if err != nil {
		return nil, fmt.Errorf("create VolumeMove %s/%s: %w (is the chart's mover installed? mover.enabled)", p.ns, p.claim, err)
	}
	fmt.Fprintf(o.ErrOut, "VolumeMove %s/%s created: claim %s to node %s.\n", p.ns, p.claim, p.claim, p.to)
	return mover.FromUnstructured(created)
}

func getMove(ctx context.Context, c *Clients, ns, name string) (*mover.VolumeMove, error) {
	u, err := c.Dynamic.Resource(mover.Resource).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, err
		}
		return nil, fmt.Errorf("read VolumeMove %s/%s: %w", ns, name, err)
	}
	return mover.FromUnstructured(u)
}

func (o *Options) writeMove(r *MoveReport) error {
	if o.Output != OutputTable && o.Output != "table" {
		return writeStructured(o.Out, o.Output, r)
	}
	w := o.Out
	switch r.Phase {
	case mover.PhaseSucceeded:
		fmt.Fprintf(w, "Claim %s moved from node %s to node %s.\n", r.Claim, orDash(r.From), r.To)
	case mover.PhaseFailed:
		fmt.Fprintf(w, "Claim %s not moved to node %s: %s.\n", r.Claim, r.To, orDash(r.Reason))
	default:
		fmt.Fprintf(w, "Claim %s moving from node %s to node %s: %s.\n", r.Claim, orDash(r.From), r.To, r.Phase)
	}
	for _, l := range []struct {
		what string
		at   *metav1.Time
	}{{"started", r.StartedAt}, {"stopped", r.StoppedAt}, {"switched", r.SwitchedAt}, {"running", r.RunningAt}, {"finished", r.FinishedAt}} {
		if l.at != nil {
			fmt.Fprintf(w, "  %-10s%s\n", l.what+":", l.at.UTC().Format(time.RFC3339))
		}
	}
	if r.DowntimeSeconds != nil {
		fmt.Fprintf(w, "  %-10s%s\n", "downtime:", time.Duration(*r.DowntimeSeconds)*time.Second)
	}
	fmt.Fprintf(w, "  %-10s%s\n", "message:", orDash(r.Message))
	return nil
}

func newMoveStatusCommand(o *Options) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "List the VolumeMoves of the namespace",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.runIn(cmd, all, o.moveStatus)
		},
	}
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "the moves of every namespace")
	return cmd
}

func (o *Options) moveStatus(ctx context.Context, c *Clients, ns string) error {
	list, err := c.Dynamic.Resource(mover.Resource).Namespace(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list VolumeMoves (is the chart's mover installed? mover.enabled): %w", err)
	}
	reports := []MoveReport{}
	for i := range list.Items {
		mv, err := mover.FromUnstructured(&list.Items[i])
		if err != nil {
			return err
		}
		reports = append(reports, reportOf(mv))
	}
	if o.Output != OutputTable && o.Output != "table" {
		return writeStructured(o.Out, o.Output, reports)
	}
	t := newTable(o.Out, "MOVE", "CLAIM", "FROM", "TO", "PHASE", "DOWNTIME", "MESSAGE")
	for _, r := range reports {
		t.row(r.Move, r.Claim, orDash(r.From), r.To, string(r.Phase), downtime(r.DowntimeSeconds), orDash(r.Message))
	}
	return t.flush()
}

func downtime(s *int64) string {
	if s == nil {
		return "-"
	}
	return (time.Duration(*s) * time.Second).String()
}
