package kubectlberth

import (
	"context"
	"strconv"

	"github.com/spf13/cobra"
)

// PoolRow is one pool on one node, or a driver pod whose metrics could not be read
// (Pool empty, Problem set).
type PoolRow struct {
	PoolFacts
	Pod       string `json:"pod"`
	Component string `json:"component"`
	Problem   string `json:"problem,omitempty"`
}

func newPoolsCommand(o *Options) *cobra.Command {
	return &cobra.Command{
		Use:   "pools",
		Short: "Each node's pools: kind, capacity, use, volumes, whether served",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd, func(ctx context.Context, c *Clients) error { return o.pools(ctx, c) })
		},
	}
}

func (o *Options) pools(ctx context.Context, c *Clients) error {
	sources, err := findSources(ctx, c.Kube, o.DriverNamespace)
	if err != nil {
		return err
	}
	scrapeAll(ctx, c.Kube, sources)
	rows := poolRows(sources)
	if o.Output != OutputTable && o.Output != "table" {
		return writeStructured(o.Out, o.Output, map[string]any{"pools": rows})
	}
	t := newTable(o.Out, "NODE", "POOL", "KIND", "CAPACITY", "USED", "FREE", "ALLOCATED", "VOLUMES", "HEALTH")
	for _, r := range rows {
		if r.Problem != "" {
			t.row(nodeLabel(r.Node, r.Component), "-", "-", "-", "-", "-", "-", "-", "unknown: "+r.Problem)
			continue
		}
		used := optBytes(r.UsedBytes)
		if r.UsedBytes != nil && r.CapacityBytes != nil && r.FreeBytes != nil {
			// The filesystem's share in use: used over used plus free.
			if pct := percent(*r.UsedBytes, *r.UsedBytes+*r.FreeBytes); pct != "" {
				used += " (" + pct + ")"
			}
		}
		t.row(nodeLabel(r.Node, r.Component), r.Pool, r.Kind, optBytes(r.CapacityBytes), used, optBytes(r.FreeBytes),
			humanBytes(r.AllocatedBytes), strconv.FormatInt(r.Volumes, 10), poolHealth(r.PoolFacts))
	}
	if len(rows) == 0 {
		t.row("(no Berth driver pods found)")
	}
	return t.flush()
}

// poolRows lists every source's pools, node by node.
func poolRows(sources []*Source) []PoolRow {
	var rows []PoolRow
	for _, s := range sources {
		if s.Scrape == nil {
			msg := "metrics not read"
			if s.Err != nil {
				msg = s.Err.Error()
			}
			rows = append(rows, PoolRow{PoolFacts: PoolFacts{Node: s.Node}, Pod: s.Namespace + "/" + s.Pod, Problem: msg, Component: s.Component})
			continue
		}
		for _, p := range s.Scrape.Pools {
			if p.Node == "" {
				p.Node = s.Node
			}
			rows = append(rows, PoolRow{PoolFacts: p, Pod: s.Namespace + "/" + s.Pod, Component: s.Component})
		}
	}
	return rows
}

func poolHealth(p PoolFacts) string {
	if p.Served {
		return "served"
	}
	if p.Reason == "" {
		return "not served"
	}
	return "not served: " + p.Reason
}

// nodeLabel marks the controller's rows.
func nodeLabel(node, component string) string {
	if component == "controller" {
		return node + " (controller)"
	}
	return node
}
