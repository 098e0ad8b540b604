package kubectlberth

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/berth-csi/berth/pkg/mover"
	"github.com/berth-csi/berth/pkg/orphans"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8slabels "k8s.io/apimachinery/pkg/labels"
)

type evacuateOptions struct {
	// namespace, when -n is given, limits the evacuation to its claims ("": all).
	namespace string
	parallel  int
	wait      bool
	timeout   time.Duration
}

// EvacuateReport is evacuate's structured output: a row per claim of the node.
type EvacuateReport struct {
	Node   string        `json:"node"`
	Claims []EvacuateRow `json:"claims"`
}

// EvacuateRow is a claim of the node: where it goes and how its move went, or why
// it stays (Skipped).
type EvacuateRow struct {
	Claim     string `json:"claim"`
	SizeBytes int64  `json:"sizeBytes"`
	To        string `json:"to,omitempty"`
	// Phase is the move's, or Skipped when no node has room for the claim.
	Phase           string `json:"phase"`
	DowntimeSeconds *int64 `json:"downtimeSeconds,omitempty"`
	Message         string `json:"message,omitempty"`
}

const phaseSkipped = "Skipped"

func newEvacuateCommand(o *Options) *cobra.Command {
	var eo evacuateOptions
	cmd := &cobra.Command{
		Use:   "evacuate NODE",
		Short: "Move every claim of node-local pools off a node",
		Long: `evacuate moves each claim whose volume is on node NODE (a node-local pool of the
driver) to another node, as kubectl berth move does: a Ready node that runs the driver
and is not cordoned, with room for it (the largest CSIStorageCapacity of the claim's
StorageClass for the node, less what this evacuation already sends there; the
largest claims are placed first, each on the node with the most room). A claim that
fits nowhere is skipped and said. At most --parallel moves run at once; without
--wait every move is made at once and the mover's --workers bounds them. Cordon the
node first so that nothing new lands there. It fails if a claim stays. With -n, only
the claims of that namespace are moved (without it, every namespace's).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if eo.parallel < 1 {
				return fmt.Errorf("--parallel %d: must be at least 1", eo.parallel)
			}
			return o.runIn(cmd, !cmd.Flags().Changed("namespace"), func(ctx context.Context, c *Clients, ns string) error {
				eo.namespace = ns
				return o.evacuate(ctx, c, args[0], eo)
			})
		},
	}
	f := cmd.Flags()
	f.IntVar(&eo.parallel, "parallel", 2, "moves running at once")
	f.BoolVar(&eo.wait, "wait", true, "wait until every move is finished, printing their phases")
	f.DurationVar(&eo.timeout, "timeout", 2*time.Hour, "how long to wait (the moves go on after it)")
	f.DurationVar(&o.Poll, "poll", 2*time.Second, "how often the moves' status is read while waiting")
	return cmd
}

// evacuee is a claim of the node.
type evacuee struct {
	ns, claim, class string
	size             resource.Quantity
}

func (o *Options) evacuate(ctx context.Context, c *Clients, node string, eo evacuateOptions) error {
	claims, err := o.claimsOn(ctx, c, node, eo.namespace)
	if err != nil {
		return err
	}
	targets, err := o.targets(ctx, c, node)
	if err != nil {
		return err
	}
	capacities, err := c.Kube.StorageV1().CSIStorageCapacities(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list CSIStorageCapacities: %w", err)
	}
	rep := &EvacuateReport{Node: node, Claims: []EvacuateRow{}}
	var plans []movePlan
	var rows []int // rep.Claims index of each plan
	for _, e := range place(claims, targets, capacities.Items) {
		row := EvacuateRow{Claim: e.ns + "/" + e.claim, SizeBytes: e.size.Value(), To: e.to, Phase: phaseSkipped, Message: e.why}
		if e.to != "" {
			row.Phase = string(mover.PhasePending)
			plans = append(plans, movePlan{ns: e.ns, claim: e.claim, to: e.to})
			rows = append(rows, len(rep.Claims))
		} else {
			fmt.Fprintf(o.ErrOut, "%s skipped: %s\n", row.Claim, e.why)
		}
		rep.Claims = append(rep.Claims, row)
	}
	moves, err := o.runMoves(ctx, c, plans, eo.parallel, eo.wait, true, eo.timeout)
	for i, mv := range moves {
		if mv == nil {
			continue
		}
		row := &rep.Claims[rows[i]]
		row.Phase, row.DowntimeSeconds, row.Message = string(phaseOf(mv)), mv.Status.DowntimeSeconds, mv.Status.Message
	}
	if werr := o.writeEvacuate(rep); werr != nil {
		return werr
	}
	if err != nil {
		return err
	}
	var left []string
	for _, r := range rep.Claims {
		if r.Phase == phaseSkipped || r.Phase == string(mover.PhaseFailed) {
			left = append(left, r.Claim)
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("%w: %d claims stay on node %s: %s", ErrMoveFailed, len(left), node, strings.Join(left, ", "))
	}
	return nil
}

// claimsOn lists the bound claims whose PVs are the driver's, on node, of
// namespace ns ("": of every namespace).
func (o *Options) claimsOn(ctx context.Context, c *Clients, node, ns string) ([]evacuee, error) {
	pvs, err := c.Kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list PersistentVolumes: %w", err)
	}
	var out []evacuee
	for i := range pvs.Items {
		pv := &pvs.Items[i]
		if _, ok := orphans.HandleOf(pv, o.DriverName); !ok || mover.PVNode(pv) != node || pv.Spec.ClaimRef == nil || pv.Status.Phase != corev1.VolumeBound ||
			(ns != "" && pv.Spec.ClaimRef.Namespace != ns) {
			continue
		}
		out = append(out, evacuee{ns: pv.Spec.ClaimRef.Namespace, claim: pv.Spec.ClaimRef.Name, class: pv.Spec.StorageClassName,
			size: pv.Spec.Capacity[corev1.ResourceStorage]})
	}
	return out, nil
}

// targets are the nodes a claim may go to: Ready, schedulable, running the
// driver, not the node evacuated.
func (o *Options) targets(ctx context.Context, c *Clients, node string) ([]corev1.Node, error) {
	nodes, err := c.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	csiNodes, err := c.Kube.StorageV1().CSINodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list CSINodes: %w", err)
	}
	withDriver := map[string]bool{}
	for _, n := range csiNodes.Items {
		if slices.ContainsFunc(n.Spec.Drivers, func(d storagev1.CSINodeDriver) bool { return d.Name == o.DriverName }) {
			withDriver[n.Name] = true
		}
	}
	var out []corev1.Node
	for _, n := range nodes.Items {
		if n.Name != node && mover.NodeReady(&n) && !n.Spec.Unschedulable && withDriver[n.Name] {
			out = append(out, n)
		}
	}
	return out, nil
}

// placed is an evacuee and its target, or why it has none.
type placed struct {
	evacuee
	to, why string
}

// place chooses a target for each claim, the largest first: the node with the most
// room for the claim's class after it (room: the largest capacity that the class's
// CSIStorageCapacities give the node's segment, less what is placed there already).
func place(claims []evacuee, nodes []corev1.Node, caps []storagev1.CSIStorageCapacity) []placed {
	sort.SliceStable(claims, func(i, j int) bool {
		if c := claims[i].size.Cmp(claims[j].size); c != 0 {
			return c > 0
		}
		return claims[i].ns+"/"+claims[i].claim < claims[j].ns+"/"+claims[j].claim
	})
	planned := map[string]int64{} // node -> bytes sent there
	out := make([]placed, 0, len(claims))
	for _, e := range claims {
		p := placed{evacuee: e}
		best, bestRoom := "", int64(-1)
		for i := range nodes {
			n := &nodes[i]
			total, limit := capacityFor(n, e.class, caps)
			room := total - planned[n.Name] - e.size.Value()
			if total < 0 || room < 0 || limit >= 0 && limit < e.size.Value() {
				continue
			}
			if room > bestRoom || room == bestRoom && n.Name < best {
				best, bestRoom = n.Name, room
			}
		}
		if best == "" {
			p.why = fmt.Sprintf("no Ready node running the driver has room for %s of class %q", e.size.String(), e.class)
			if len(nodes) == 0 {
				p.why = "no other Ready, schedulable node runs the driver"
			}
		} else {
			p.to = best
			planned[best] += e.size.Value()
		}
		out = append(out, p)
	}
	return out
}

// capacityFor is the largest capacity and its maximum volume size that the
// class's CSIStorageCapacities give node's topology segment; -1 when none (or no
// maximum).
func capacityFor(n *corev1.Node, class string, caps []storagev1.CSIStorageCapacity) (total, limit int64) {
	total, limit = -1, -1
	for i := range caps {
		cp := &caps[i]
		if cp.StorageClassName != class || cp.Capacity == nil {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(cp.NodeTopology)
		if err != nil || cp.NodeTopology == nil || !sel.Matches(k8slabels.Set(n.Labels)) {
			continue
		}
		if v := cp.Capacity.Value(); v > total {
			total, limit = v, -1
			if cp.MaximumVolumeSize != nil {
				limit = cp.MaximumVolumeSize.Value()
			}
		}
	}
	return total, limit
}

func (o *Options) writeEvacuate(r *EvacuateReport) error {
	if o.Output != OutputTable && o.Output != "table" {
		return writeStructured(o.Out, o.Output, r)
	}
	fmt.Fprintf(o.Out, "Node %s: %d claims of node-local pools.\n", r.Node, len(r.Claims))
	if len(r.Claims) == 0 {
		return nil
	}
	t := newTable(o.Out, "CLAIM", "SIZE", "TO", "PHASE", "DOWNTIME", "MESSAGE")
	for _, c := range r.Claims {
		t.row(c.Claim, humanBytes(c.SizeBytes), orDash(c.To), c.Phase, downtime(c.DowntimeSeconds), orDash(c.Message))
	}
	return t.flush()
}
