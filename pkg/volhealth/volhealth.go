// Package volhealth renders engine problems as CSI VolumeHealth messages, for the
// controller's and the node's health RPCs alike.
package volhealth

import (
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
)

// Of converts a volume's problems into its CSI VolumeHealth (no entries: healthy).
func Of(volumeID string, problems []storage.Problem) *csi.VolumeHealth {
	h := &csi.VolumeHealth{VolumeId: volumeID}
	for _, p := range problems {
		t := csi.VolumeHealthErrorType_DEGRADED
		if p.Kind == storage.Inaccessible {
			t = csi.VolumeHealthErrorType_INACCESSIBLE
		}
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
			Status: t, Reason: p.Reason, Message: p.Message,
		})
	}
	return h
}
