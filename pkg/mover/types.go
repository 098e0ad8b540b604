// Package mover moves a claim of a node-local pool from its node to another, with
// the whole state of each move in a VolumeMove object (berth.csi.io/v1alpha1): a
// clone of the claim is provisioned on the target node while the claim's pods run,
// then the pods are stopped, the claim is switched to the clone (whose first stage
// on the target node copies what changed since the clone, berth.csi.io/resync-from),
// the pods are started again and the old volume is deleted.
//
// Every step is idempotent and each phase is written to the VolumeMove's status
// before the irreversible action it leads to, so a mover killed at any instant
// resumes the move and finishes it: a failure before Switching rolls back to the
// old state, from Switching on the move only goes forward.
package mover

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
)

// Resource is the VolumeMoves' resource (charts/berth/templates/volumemove-crd.yaml).
var Resource = schema.GroupVersionResource{Group: "berth.csi.io", Version: "v1alpha1", Resource: "volumemoves"}

// Kind and ListKind of a VolumeMove.
const (
	Kind     = "VolumeMove"
	ListKind = "VolumeMoveList"
)

// Phase is where a move is. Pending, Copying and Stopping roll back on a failure;
// Switching, Starting and Cleaning only go forward.
type Phase string

// The phases, in order.
const (
	PhasePending   Phase = "Pending"
	PhaseCopying   Phase = "Copying"
	PhaseStopping  Phase = "Stopping"
	PhaseSwitching Phase = "Switching"
	PhaseStarting  Phase = "Starting"
	PhaseCleaning  Phase = "Cleaning"
	PhaseSucceeded Phase = "Succeeded"
	PhaseFailed    Phase = "Failed"
)

// Finished: the move is over, one way or the other.
func (p Phase) Finished() bool { return p == PhaseSucceeded || p == PhaseFailed }

// forwardOnly: the claim may already be switched; the move cannot go back.
func (p Phase) forwardOnly() bool {
	return p == PhaseSwitching || p == PhaseStarting || p == PhaseCleaning
}

// VolumeMove is a move of the claim spec.claim, in the move's namespace, to node
// spec.toNode.
type VolumeMove struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              Spec   `json:"spec"`
	Status            Status `json:"status,omitempty"`
}

// Spec is what the user asks.
type Spec struct {
	Claim  string `json:"claim"`
	ToNode string `json:"toNode"`
}

// Status is the move's whole state: what was found, what was made, what to restore.
type Status struct {
	Phase   Phase  `json:"phase,omitempty"`
	Message string `json:"message,omitempty"`
	// Failure is why the move fails; set while a move that had not reached
	// Switching rolls back, and kept when its phase becomes Failed.
	Failure string `json:"failure,omitempty"`
	// Reason is the failure's kind: ClaimNotFound, ClaimNotBound, NotOurs,
	// SharedVolume, BadTarget, PodNotOwned, ScaleDeletesClaim, Conflict, Invalid or Cancelled (the VolumeMove deleted before Switching).
	Reason string `json:"reason,omitempty"`

	SourceNode   string    `json:"sourceNode,omitempty"`
	SourcePV     string    `json:"sourcePV,omitempty"`
	SourceVolume string    `json:"sourceVolume,omitempty"`
	ClaimUID     types.UID `json:"claimUID,omitempty"`
	// SourceReclaimPolicy is the source PV's policy before the move set Retain.
	SourceReclaimPolicy corev1.PersistentVolumeReclaimPolicy `json:"sourceReclaimPolicy,omitempty"`
	// Claim is the claim as it is to be created again on the target PV.
	Claim *ClaimRecord `json:"claim,omitempty"`
	// Owners are the controllers of the claim's pods, and their replicas before the move.
	Owners []Owner `json:"owners,omitempty"`

	TempClaim    string    `json:"tempClaim,omitempty"`
	TempPVUID    types.UID `json:"tempPVUID,omitempty"`
	TargetVolume string    `json:"targetVolume,omitempty"`
	// TargetPV is the name of the temporary claim's PV and then of the PV made again
	// from it for the claim.
	TargetPV string `json:"targetPV,omitempty"`
	// TargetReclaimPolicy is the temporary PV's policy before the move set Retain.
	TargetReclaimPolicy corev1.PersistentVolumeReclaimPolicy `json:"targetReclaimPolicy,omitempty"`
	// TargetPVRecord is the temporary PV as it was before its object was deleted.
	TargetPVRecord *PVRecord `json:"targetPVRecord,omitempty"`

	StartedAt *metav1.Time `json:"startedAt,omitempty"`
	CopiedAt  *metav1.Time `json:"copiedAt,omitempty"`
	// StoppedAt and RunningAt, between which the claim's pods are down, in microseconds.
	StoppedAt  *metav1.MicroTime `json:"stoppedAt,omitempty"`
	SwitchedAt *metav1.Time      `json:"switchedAt,omitempty"`
	RunningAt  *metav1.MicroTime `json:"runningAt,omitempty"`
	// ReadBackAt: the read-back pod ran on the target node (a claim without pods;
	// readback.go), so its copy is staged and up to date, and the source may go.
	ReadBackAt      *metav1.Time `json:"readBackAt,omitempty"`
	FinishedAt      *metav1.Time `json:"finishedAt,omitempty"`
	DowntimeSeconds *int64       `json:"downtimeSeconds,omitempty"`
}

// ClaimRecord is a claim's labels, annotations (without the binding ones) and spec.
type ClaimRecord struct {
	Labels      map[string]string                `json:"labels,omitempty"`
	Annotations map[string]string                `json:"annotations,omitempty"`
	Spec        corev1.PersistentVolumeClaimSpec `json:"spec"`
}

// PVRecord is a PV's labels, annotations and spec.
type PVRecord struct {
	Labels      map[string]string           `json:"labels,omitempty"`
	Annotations map[string]string           `json:"annotations,omitempty"`
	Spec        corev1.PersistentVolumeSpec `json:"spec"`
}

// Owner is a StatefulSet or a Deployment whose pods use the claim.
type Owner struct {
	Kind     string `json:"kind"`
	Name     string `json:"name"`
	Replicas int32  `json:"replicas"`
}

func (o Owner) String() string { return o.Kind + " " + o.Name }

// New is a VolumeMove of ns/claim to node.
func New(ns, name, claim, node string) *VolumeMove {
	return &VolumeMove{
		TypeMeta:   metav1.TypeMeta{APIVersion: Resource.GroupVersion().String(), Kind: Kind},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       Spec{Claim: claim, ToNode: node},
	}
}

// FromUnstructured reads a VolumeMove from the dynamic client's object.
func FromUnstructured(u *unstructured.Unstructured) (*VolumeMove, error) {
	mv := &VolumeMove{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, mv); err != nil {
		return nil, fmt.Errorf("read VolumeMove %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	return mv, nil
}

// ToUnstructured is the object the dynamic client writes.
func (mv *VolumeMove) ToUnstructured() (*unstructured.Unstructured, error) {
	mv.APIVersion, mv.Kind = Resource.GroupVersion().String(), Kind
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(mv)
	if err != nil {
		return nil, fmt.Errorf("write VolumeMove %s/%s: %w", mv.Namespace, mv.Name, err)
	}
	return &unstructured.Unstructured{Object: obj}, nil
}
