package kubectlberth

import (
	"context"
	"sort"
	"strconv"

	"github.com/berth-csi/berth/pkg/mover"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
)

// Volume health, as volumes shows it.
const (
	HealthHealthy   = "Healthy"
	HealthUnhealthy = "Unhealthy"
	HealthMissing   = "Missing" // its node's driver serves the pool and lacks the volume
	HealthUnknown   = "Unknown" // no driver that could hold it was read
	HealthAdopted   = "Adopted" // an adopted host directory: no record, no metrics
)

// VolumeRow is one PersistentVolume of the driver and what its driver says of it.
type VolumeRow struct {
	PV            string     `json:"persistentVolume"`
	Namespace     string     `json:"namespace,omitempty"`
	Claim         string     `json:"claim,omitempty"`
	Phase         string     `json:"phase"`
	VolumeID      string     `json:"volumeID"`
	Node          string     `json:"node,omitempty"`
	Pool          string     `json:"pool,omitempty"`
	CapacityBytes int64      `json:"capacityBytes"`
	UsedBytes     *int64     `json:"usedBytes,omitempty"`
	Health        string     `json:"health"`
	Snapshots     *int       `json:"snapshots,omitempty"`
	Copy          *CopyFacts `json:"copy,omitempty"`
}

func newVolumesCommand(o *Options) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "volumes",
		Short: "The driver's volumes: claim, node, pool, size, use, health, snapshots, copies in progress",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.runIn(cmd, all, o.volumes)
		},
	}
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "every namespace's claims, and volumes of no claim")
	return cmd
}

// volumes lists the volumes of namespace's claims ("": all of them).
func (o *Options) volumes(ctx context.Context, c *Clients, namespace string) error {
	f, err := gather(ctx, c, o)
	if err != nil {
		return err
	}
	rows := volumeRows(f, namespace)
	if o.Output != OutputTable && o.Output != "table" {
		return writeStructured(o.Out, o.Output, map[string]any{"volumes": rows})
	}
	t := newTable(o.Out, "CLAIM", "NODE", "POOL", "SIZE", "USED", "HEALTH", "SNAPSHOTS", "COPY")
	for _, r := range rows {
		claim := "-"
		if r.Claim != "" {
			claim = r.Namespace + "/" + r.Claim
		}
		if r.Phase != string(corev1.VolumeBound) {
			claim += " (" + r.Phase + ")"
		}
		used := optBytes(r.UsedBytes)
		if r.UsedBytes != nil {
			if pct := percent(*r.UsedBytes, r.CapacityBytes); pct != "" {
				used += " (" + pct + ")"
			}
		}
		snaps := "-"
		if r.Snapshots != nil {
			snaps = strconv.Itoa(*r.Snapshots)
		}
		cp := ""
		if r.Copy != nil {
			cp = progressBar(r.Copy.DoneBytes, r.Copy.TotalBytes, 20)
		}
		t.row(claim, orDash(r.Node), orDash(r.Pool), humanBytes(r.CapacityBytes), used, r.Health, snaps, cp)
	}
	if len(rows) == 0 {
		t.row("(no volumes)")
	}
	return t.flush()
}

func volumeRows(f *Facts, namespace string) []VolumeRow {
	var rows []VolumeRow
	for i := range f.PVs {
		pv := &f.PVs[i]
		var ns, claim string
		if ref := pv.Spec.ClaimRef; ref != nil {
			ns, claim = ref.Namespace, ref.Name
		}
		if namespace != "" && ns != namespace {
			continue
		}
		id := pv.Spec.CSI.VolumeHandle
		r := VolumeRow{PV: pv.Name, Namespace: ns, Claim: claim, Phase: string(pv.Status.Phase), VolumeID: id,
			Node: mover.PVNode(pv), Pool: poolOf(id)}
		if q, ok := pv.Spec.Capacity[corev1.ResourceStorage]; ok {
			r.CapacityBytes = q.Value()
		}
		switch v, _, known := f.lookup(id, r.Node); {
		case r.Pool == "":
			r.Health = HealthAdopted
		case v.ID != "":
			r.CapacityBytes, r.UsedBytes = v.CapacityBytes, v.UsedBytes
			r.Health = HealthUnhealthy
			if v.Healthy {
				r.Health = HealthHealthy
			}
		case known:
			r.Health = HealthMissing
		default:
			r.Health = HealthUnknown
		}
		if f.Snapshots != nil {
			n := f.Snapshots[id]
			r.Snapshots = &n
		}
		if cp, ok := f.copyOf(id); ok {
			r.Copy = &cp
		}
		rows = append(rows, r)
	}
	sort.SliceStable(rows, func(i, j int) bool {
		a, b := rows[i], rows[j]
		return a.Namespace+"\x00"+a.Claim+"\x00"+a.PV < b.Namespace+"\x00"+b.Claim+"\x00"+b.PV
	})
	return rows
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
