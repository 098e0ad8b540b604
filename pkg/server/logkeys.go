package server

import (
	"github.com/container-storage-interface/spec/lib/go/csi"
)

// Keys the sidecars and the kubelet pass in parameters and volume_context.
const (
	ParamClaimNamespace = "csi.storage.k8s.io/pvc/namespace"
	ParamClaimName      = "csi.storage.k8s.io/pvc/name"
	ctxPodNamespace     = "csi.storage.k8s.io/pod.namespace"
	ctxPodName          = "csi.storage.k8s.io/pod.name"
)

// Volumes answers what a request alone does not say about its volume, from the
// engine's memory (never the disk: it runs on every call).
type Volumes interface {
	// CreatedVolumeID is the ID CreateVolume gives the volume name asks for with
	// these parameters ("" when they name no pool this driver has).
	CreatedVolumeID(name string, params map[string]string) string
	// ClaimOf is the claim recorded with the volume, if any.
	ClaimOf(volumeID string) (namespace, name string, ok bool)
}

// logKeys returns the key/value pairs every line logged under the call carries, so
// one grep follows a volume, or a claim, through the log: volumeID (the source's for
// CreateSnapshot), snapshotID, the claim's namespace and name where known (the
// provisioner's parameters, else the volume's record) and the pod a publish is for.
func logKeys(req any, vols Volumes) []any {
	var kv []any
	var volumeID, claimNS, claimName string
	switch r := req.(type) {
	case *csi.CreateVolumeRequest:
		if vols != nil {
			volumeID = vols.CreatedVolumeID(r.GetName(), r.GetParameters())
		}
		kv = append(kv, "name", r.GetName())
		claimNS, claimName = r.GetParameters()[ParamClaimNamespace], r.GetParameters()[ParamClaimName]
	case *csi.CreateSnapshotRequest:
		volumeID = r.GetSourceVolumeId()
		kv = append(kv, "snapshotName", r.GetName())
	case *csi.GetMetadataDeltaRequest:
		kv = append(kv, "baseSnapshotID", r.GetBaseSnapshotId(), "targetSnapshotID", r.GetTargetSnapshotId())
	case interface{ GetVolumeId() string }:
		volumeID = r.GetVolumeId()
	}
	if r, ok := req.(interface{ GetSnapshotId() string }); ok && r.GetSnapshotId() != "" {
		kv = append(kv, "snapshotID", r.GetSnapshotId())
	}
	if volumeID == "" {
		return kv
	}
	if claimName == "" && vols != nil {
		claimNS, claimName, _ = vols.ClaimOf(volumeID)
	}
	kv = append([]any{"volumeID", volumeID}, kv...)
	if claimName != "" {
		kv = append(kv, "claimNamespace", claimNS, "claimName", claimName)
	}
	if r, ok := req.(interface{ GetVolumeContext() map[string]string }); ok {
		if pod := r.GetVolumeContext()[ctxPodName]; pod != "" {
			kv = append(kv, "podNamespace", r.GetVolumeContext()[ctxPodNamespace], "podName", pod)
		}
	}
	return kv
}
