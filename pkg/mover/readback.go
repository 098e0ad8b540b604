package mover

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// A claim that no pod used when it was moved has no pod to start on the target
// node, and so no first stage to bring the copy up to date with the source
// (berth.csi.io/resync-from) before the source is deleted. The mover then starts a
// pod of its own there, the read-back pod: the driver's image printing its version,
// with the claim mounted read-only. Once it has run, the target node's plugin has
// staged the copy (and resynced it), and the source may go.

// readBackName is the read-back pod of a move: one per move, named after its UID.
func readBackName(mv *VolumeMove) string { return "berth-readback-" + string(mv.UID) }

// readBack runs the read-back pod until it has succeeded (""), else says what it
// waits for. A pod that failed is deleted and made again on the next pass.
func (m *Mover) readBack(ctx context.Context, mv *VolumeMove) (string, error) {
	st := &mv.Status
	name := readBackName(mv)
	p, err := m.Cluster.GetPod(ctx, mv.Namespace, name)
	switch {
	case apierrors.IsNotFound(err):
		if err := m.Cluster.CreatePod(ctx, m.readBackPod(mv)); err != nil && !apierrors.IsAlreadyExists(err) {
			return "", fmt.Errorf("create read-back pod %s/%s: %w", mv.Namespace, name, err)
		}
		return m.readBackWaiting(mv, name), nil
	case err != nil:
		return "", fmt.Errorf("read read-back pod %s/%s: %w", mv.Namespace, name, err)
	}
	switch p.Status.Phase {
	case corev1.PodSucceeded:
		if err := m.Cluster.DeletePod(ctx, mv.Namespace, name, p.UID); err != nil {
			return "", fmt.Errorf("delete read-back pod %s/%s: %w", mv.Namespace, name, err)
		}
		now := m.now()
		st.ReadBackAt = &now
		return "", nil
	case corev1.PodFailed:
		if err := m.Cluster.DeletePod(ctx, mv.Namespace, name, p.UID); err != nil {
			return "", fmt.Errorf("delete failed read-back pod %s/%s: %w", mv.Namespace, name, err)
		}
		return fmt.Sprintf("Starting: read-back pod %s failed (%s), made again", name, p.Status.Message), nil
	}
	return m.readBackWaiting(mv, name), nil
}

func (m *Mover) readBackWaiting(mv *VolumeMove, name string) string {
	return fmt.Sprintf("Starting: waiting for read-back pod %s to run on node %s (the claim has no pods; its first stage there copies what changed since the clone)",
		name, mv.Spec.ToNode)
}

// readBackPod is the read-back pod: on the target node (whatever its taints), as
// nobody, no API token, the claim read-only, a mount or a device as the claim's
// volumeMode says.
func (m *Mover) readBackPod(mv *VolumeMove) *corev1.Pod {
	c := corev1.Container{
		Name:  "read-back",
		Image: m.Image,
		Args:  []string{"--version"},
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr.To(true),
			RunAsUser:                ptr.To(int64(65534)),
			AllowPrivilegeEscalation: ptr.To(false),
			ReadOnlyRootFilesystem:   ptr.To(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
	}
	if rec := mv.Status.Claim; rec != nil && rec.Spec.VolumeMode != nil && *rec.Spec.VolumeMode == corev1.PersistentVolumeBlock {
		c.VolumeDevices = []corev1.VolumeDevice{{Name: "data", DevicePath: "/dev/data"}}
	} else {
		c.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data", ReadOnly: true}}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: readBackName(mv), Namespace: mv.Namespace,
			Labels:      map[string]string{LabelMove: moveLabel(mv)},
			Annotations: map[string]string{AnnMove: moveRef(mv)},
		},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			AutomountServiceAccountToken:  ptr.To(false),
			TerminationGracePeriodSeconds: ptr.To(int64(0)),
			SecurityContext:               &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
			Affinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
				RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
					MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{mv.Spec.ToNode}}},
				}}},
			}},
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers:  []corev1.Container{c},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: mv.Spec.Claim, ReadOnly: true},
			}}},
		},
	}
}
