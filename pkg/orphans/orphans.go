// Package orphans finds orphaned volumes: committed volumes of a served pool that no
// PersistentVolume names, e.g. the data of a Retain PV an admin deleted. It holds
// the definition that the driver's periodic scan (berth_pool_orphan_volumes) and
// kubectl berth doctor share, the paginated listing of the driver's
// PersistentVolumes, the pv-lister that serves that listing to the driver over a
// unix socket, and the scan. It only ever counts: nothing here deletes or moves.
//
// It does not import pkg/storage, so that kubectl-berth, built for any OS, uses it.
package orphans

import (
	corev1 "k8s.io/api/core/v1"
)

// Handles is the set of volume handles that the driver's PersistentVolumes name.
type Handles map[string]struct{}

// Has reports whether a PersistentVolume names id.
func (h Handles) Has(id string) bool {
	_, ok := h[id]
	return ok
}

// HandleOf is the volume handle of pv when pv is one of driver's (spec.csi.driver),
// in any phase: a Released or Failed PV still names its volume, whose data is
// reclaimed through the PV (docs/operations.md, "Retained volumes").
func HandleOf(pv *corev1.PersistentVolume, driver string) (string, bool) {
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != driver {
		return "", false
	}
	return pv.Spec.CSI.VolumeHandle, true
}

// Volume is what a judge knows of a committed volume of a served pool. Volumes still
// being created (or copied into), snapshots, adopted host directories and the
// volumes of a pool not served are never judged: callers pass none of them.
type Volume struct {
	ID string
	// Ephemeral: a CSI ephemeral inline volume, which lives as long as its pod and
	// which no PersistentVolume ever names.
	Ephemeral bool
	// Settled: committed long enough ago that the PersistentVolume the provisioner
	// makes once CreateVolume returns exists by now. The scan: committed at least
	// Grace ago; kubectl berth doctor: present in both of its reads.
	Settled bool
}

// Orphaned reports whether v is an orphan: settled, not an inline ephemeral volume,
// and named by none of the driver's PersistentVolumes.
func Orphaned(v Volume, named Handles) bool {
	return v.Settled && !v.Ephemeral && !named.Has(v.ID)
}
