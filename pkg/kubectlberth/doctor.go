package kubectlberth

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/berth-csi/berth/pkg/mover"
	"github.com/berth-csi/berth/pkg/orphans"
	"github.com/spf13/cobra"
)

// The checks doctor runs, in the order it reports them.
const (
	CheckNoDriverPods      = "NoDriverPods"
	CheckMetricsUnreadable = "MetricsUnreadable"
	CheckPoolNotServed     = "PoolNotServed"
	CheckDamagedEntries    = "DamagedEntries"
	CheckMissingVolume     = "MissingVolume"
	CheckOrphan            = "Orphan"
	CheckVolumeUnhealthy   = "VolumeUnhealthy"
	CheckFrozenFilesystem  = "FrozenFilesystem"
	CheckProjectIDRepairs  = "ProjectIDRepairs"
	CheckCopyStuck         = "CopyStuck"
)

var checkOrder = map[string]int{}

func init() {
	for i, c := range []string{CheckNoDriverPods, CheckMetricsUnreadable, CheckPoolNotServed, CheckDamagedEntries,
		CheckMissingVolume, CheckOrphan, CheckVolumeUnhealthy, CheckFrozenFilesystem, CheckProjectIDRepairs, CheckCopyStuck} {
		checkOrder[c] = i
	}
}

// Finding is one thing that needs an operator, and what to do about it.
type Finding struct {
	Check   string `json:"check"`
	Node    string `json:"node,omitempty"`
	Pool    string `json:"pool,omitempty"`
	Object  string `json:"object,omitempty"` // a volume ID, a PersistentVolume, a pod
	Problem string `json:"problem"`
	Action  string `json:"action"`
	// Fixed is set by --fix once an orphan is in its pool's trash.
	Fixed bool `json:"fixed,omitempty"`

	source *Source // the driver pod holding an orphan (--fix runs there)
}

// DoctorReport is doctor's structured output.
type DoctorReport struct {
	Findings []Finding `json:"findings"`
	Checked  Checked   `json:"checked"`
}

// Checked counts what doctor looked at.
type Checked struct {
	DriverPods        int `json:"driverPods"`
	Pools             int `json:"pools"`
	PersistentVolumes int `json:"persistentVolumes"`
	Volumes           int `json:"volumes"`
}

func newDoctorCommand(o *Options) *cobra.Command {
	var fix fixOptions
	o.Interval = 5 * time.Second
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "What needs an operator: pools not served, orphans, missing volumes, damaged records, stuck copies...",
		Long: `doctor reads the driver's PersistentVolumes and every driver pod's metrics twice,
--interval apart, and reports each problem with what to do. It exits 1 when
something needs attention, 0 when nothing does, 2 when it could not look.

--fix moves orphaned volumes (no PersistentVolume names them) to their pool's trash,
after asking on the terminal (or with --yes). The PersistentVolumes are read again
right before each removal; a volume one of them names is never touched.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd, func(ctx context.Context, c *Clients) error { return o.doctor(ctx, c, fix) })
		},
	}
	cmd.Flags().DurationVar(&o.Interval, "interval", o.Interval, "pause between the two reads of the metrics (stuck copies, frozen filesystems)")
	cmd.Flags().BoolVar(&fix.fix, "fix", false, "move orphaned volumes to their pool's trash, asking first")
	cmd.Flags().BoolVar(&fix.yes, "yes", false, "with --fix: do not ask")
	return cmd
}

func (o *Options) doctor(ctx context.Context, c *Clients, fix fixOptions) error {
	first, err := gather(ctx, c, o)
	if err != nil {
		return err
	}
	second := &Facts{PVs: first.PVs, Snapshots: first.Snapshots, Sources: make([]*Source, len(first.Sources))}
	for i, s := range first.Sources {
		cp := *s
		second.Sources[i] = &cp
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(o.Interval):
	}
	scrapeAll(ctx, c.Kube, second.Sources)
	report := diagnose(first, second, o.Interval)
	if fix.fix {
		if err := o.fixOrphans(ctx, c, report.Findings, fix); err != nil {
			return err
		}
	}
	if o.Output != OutputTable && o.Output != "table" {
		if err := writeStructured(o.Out, o.Output, report); err != nil {
			return err
		}
	} else {
		writeFindings(o, report)
	}
	for _, f := range report.Findings {
		if !f.Fixed {
			return ErrAttention
		}
	}
	return nil
}

// diagnose judges the facts of two reads: now is the later one.
func diagnose(before, now *Facts, interval time.Duration) DoctorReport {
	var out []Finding
	add := func(f Finding) { out = append(out, f) }
	r := DoctorReport{Checked: Checked{DriverPods: len(now.Sources), PersistentVolumes: len(now.PVs)}}
	if len(now.Sources) == 0 {
		add(Finding{Check: CheckNoDriverPods, Problem: "no pod labelled " + podSelector + " was found",
			Action: "install Berth (helm install berth charts/berth), or name its namespace with --driver-namespace"})
	}
	named := orphans.Handles{}
	for _, pv := range now.PVs {
		named[pv.Spec.CSI.VolumeHandle] = struct{}{}
	}
	earlier := map[string]*Source{}
	for _, s := range before.Sources {
		earlier[s.Namespace+"/"+s.Pod] = s
	}
	seen := map[string]bool{} // volumes of shared pools, reported by many sources
	for _, s := range now.Sources {
		if s.Scrape == nil {
			add(Finding{Check: CheckMetricsUnreadable, Node: s.Node, Object: s.Namespace + "/" + s.Pod, Problem: errText(s.Err),
				Action: fmt.Sprintf("kubectl -n %s describe pod %s; the chart's metrics.enabled must be true, and kubectl berth needs get on pods/proxy in %s (docs/operations.md, \"kubectl berth\")", s.Namespace, s.Pod, s.Namespace)})
			continue
		}
		prev := earlier[s.Namespace+"/"+s.Pod]
		served := map[string]bool{}
		for _, p := range s.Scrape.Pools {
			r.Checked.Pools++
			node := orElse(p.Node, s.Node)
			poolFindings(add, node, p, prevPool(prev, p.Pool), interval)
			served[p.Pool] = p.Served
		}
		ids := make([]string, 0, len(s.Scrape.Volumes))
		for id := range s.Scrape.Volumes {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			v := s.Scrape.Volumes[id]
			if seen[id] {
				continue
			}
			seen[id] = true
			r.Checked.Volumes++
			// The driver's orphan scan judges by the same rule (pkg/orphans), in the
			// same pools: a pool not served is not judged, its index may be empty or
			// old. Settled here: in both reads, as a volume only just created may not
			// have its PV yet (the scan: committed 10 minutes ago).
			if !served[v.Pool] || !orphans.Orphaned(orphans.Volume{ID: id, Ephemeral: v.Ephemeral, Settled: inEarlier(prev, id)}, named) {
				continue
			}
			was := ""
			if v.Claim != "" {
				was = fmt.Sprintf(", made for claim %s/%s", v.Namespace, v.Claim)
			}
			add(Finding{Check: CheckOrphan, Node: s.Node, Pool: v.Pool, Object: id, source: s,
				Problem: fmt.Sprintf("no PersistentVolume names this volume (%s%s): its data stays on the node", humanBytes(v.CapacityBytes), was),
				Action:  "if its data is not needed: kubectl berth doctor --fix (moves it to the pool's trash, which the driver purges); to keep it, create a PersistentVolume naming it (spec.csi.volumeHandle) on that node"})
		}
		for _, cp := range sortedCopies(s.Scrape.Copies) {
			if prev == nil || prev.Scrape == nil {
				continue
			}
			if old, ok := prev.Scrape.Copies[cp.VolumeID]; ok && old.DoneBytes == cp.DoneBytes {
				add(Finding{Check: CheckCopyStuck, Node: s.Node, Pool: cp.Pool, Object: cp.VolumeID,
					Problem: fmt.Sprintf("the copy into this volume made no progress in %s (%s of %s copied)", interval, humanBytes(cp.DoneBytes), humanBytes(cp.TotalBytes)),
					Action:  "look at the node's log (kubectl logs) for the volume ID; a copy survives no driver restart: a restart rolls it back and the provisioner retries (docs/operations.md, \"Long restores and clones\")"})
			}
		}
	}
	for _, pv := range now.PVs {
		id, node := pv.Spec.CSI.VolumeHandle, mover.PVNode(&pv)
		pool := poolOf(id)
		if pool == "" {
			continue // an adopted directory: no record to find
		}
		v, _, known := now.lookup(id, node)
		switch {
		case v.ID == "" && known:
			add(Finding{Check: CheckMissingVolume, Node: node, Pool: pool, Object: "pv/" + pv.Name,
				Problem: fmt.Sprintf("its volume %s is not in pool %s, which the driver serves", id, pool),
				Action:  "look for a DamagedEntries finding on the same pool (an unreadable record hides its volume); otherwise the data is gone: restore it from a backup, or delete the claim and the PersistentVolume"})
		case v.ID != "" && !v.Healthy && poolServed(now, node, pool):
			claim := ""
			if pv.Spec.ClaimRef != nil {
				claim = fmt.Sprintf(" (claim %s/%s)", pv.Spec.ClaimRef.Namespace, pv.Spec.ClaimRef.Name)
			}
			add(Finding{Check: CheckVolumeUnhealthy, Node: node, Pool: pool, Object: "pv/" + pv.Name,
				Problem: "the driver reports the volume unhealthy" + claim,
				Action:  "kubectl describe the claim (the health monitor's events name the problem) and read the node's log for the volume ID"})
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if checkOrder[a.Check] != checkOrder[b.Check] {
			return checkOrder[a.Check] < checkOrder[b.Check]
		}
		return a.Node+"\x00"+a.Pool+"\x00"+a.Object < b.Node+"\x00"+b.Pool+"\x00"+b.Object
	})
	r.Findings = out
	if r.Findings == nil {
		r.Findings = []Finding{}
	}
	return r
}

// poolFindings judges one pool; prev is its earlier read (nil when none).
func poolFindings(add func(Finding), node string, p PoolFacts, prev *PoolFacts, interval time.Duration) {
	if !p.Served {
		add(Finding{Check: CheckPoolNotServed, Node: node, Pool: p.Pool, Problem: "not served (" + orElse(p.Reason, "unknown reason") + "): its volumes' calls fail with Unavailable",
			Action: unservedAction(p.Reason)})
	}
	if n := p.DamagedVolumes + p.DamagedSnapshots; n > 0 {
		add(Finding{Check: CheckDamagedEntries, Node: node, Pool: p.Pool,
			Problem: fmt.Sprintf("%d volume and %d snapshot directories have no readable record; they are kept untouched", p.DamagedVolumes, p.DamagedSnapshots),
			Action:  "the node's log names each directory; repair or remove it by hand (docs/operations.md, \"Unreadable records\")"})
	}
	if p.Frozen > 0 && prev != nil && prev.Frozen > 0 {
		add(Finding{Check: CheckFrozenFilesystem, Node: node, Pool: p.Pool,
			Problem: fmt.Sprintf("%d staged filesystems frozen for a copy, still frozen after %s: writes to them block", p.Frozen, interval),
			Action:  "a snapshot copy without reflinks freezes a published image for its length; if no copy runs, restart the node plugin pod (start-up thaws them) (docs/operations.md, \"Frozen filesystems\")"})
	}
	if p.ProjectIDRepairs > 0 {
		add(Finding{Check: CheckProjectIDRepairs, Node: node, Pool: p.Pool,
			Problem: fmt.Sprintf("the project scans reset %d quota project IDs since the driver started: something in a pod changed them", p.ProjectIDRepairs),
			Action:  "find the pod (the node's log names the volumes) and check its privileges (docs/operations.md, \"Quota pools and project IDs\"); the counter restarts with the driver"})
	}
}

func unservedAction(reason string) string {
	switch reason {
	case "MountFailed", "MountLost":
		return "mount the pool's filesystem on the node (or repair its shared mount); the driver retries every --pool-retry-interval and serves it again without a restart"
	case "CheckFailed":
		return "the pool's filesystem cannot serve its kind (a quota pool without project quotas...): the node's log says why; fix the filesystem or the pool's kind"
	}
	return "read the node plugin's log and /readyz"
}

func prevPool(s *Source, name string) *PoolFacts {
	if s == nil || s.Scrape == nil {
		return nil
	}
	for i := range s.Scrape.Pools {
		if s.Scrape.Pools[i].Pool == name {
			return &s.Scrape.Pools[i]
		}
	}
	return nil
}

func inEarlier(s *Source, id string) bool {
	if s == nil || s.Scrape == nil {
		return false
	}
	_, ok := s.Scrape.Volumes[id]
	return ok
}

// poolServed reports whether the pool is served where the volume lives.
func poolServed(f *Facts, node, pool string) bool {
	for _, s := range f.Sources {
		if s.Scrape == nil || node != "" && s.Node != node {
			continue
		}
		for _, p := range s.Scrape.Pools {
			if p.Pool == pool && p.Served {
				return true
			}
		}
	}
	return false
}

func sortedCopies(m map[string]CopyFacts) []CopyFacts {
	out := make([]CopyFacts, 0, len(m))
	for _, c := range m {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VolumeID < out[j].VolumeID })
	return out
}

func errText(err error) string {
	if err == nil {
		return "metrics not read"
	}
	return err.Error()
}

func orElse(s, dflt string) string {
	if s == "" {
		return dflt
	}
	return s
}

// writeFindings prints each finding as a short block: what, where, what to do.
func writeFindings(o *Options, r DoctorReport) {
	w := o.Out
	open := 0
	for _, f := range r.Findings {
		where := []string{}
		if f.Node != "" {
			where = append(where, "node "+f.Node)
		}
		if f.Pool != "" {
			where = append(where, "pool "+f.Pool)
		}
		if f.Object != "" {
			where = append(where, f.Object)
		}
		mark := "!"
		if f.Fixed {
			mark = "fixed"
		} else {
			open++
		}
		fmt.Fprintf(w, "[%s] %s: %s\n", mark, f.Check, strings.Join(where, ", "))
		fmt.Fprintf(w, "    %s\n", f.Problem)
		if !f.Fixed {
			fmt.Fprintf(w, "    what to do: %s\n", f.Action)
		}
	}
	c := r.Checked
	summary := fmt.Sprintf("%d driver pods, %d pools, %d PersistentVolumes, %d volumes checked", c.DriverPods, c.Pools, c.PersistentVolumes, c.Volumes)
	if open == 0 {
		fmt.Fprintf(w, "Nothing needs attention (%s).\n", summary)
		return
	}
	fmt.Fprintf(w, "%d findings need attention (%s).\n", open, summary)
}
