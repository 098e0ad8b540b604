package kubectlberth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/berth-csi/berth/pkg/mover"
	"github.com/berth-csi/berth/pkg/orphans"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
)

// recover rebuilds a claim whose node is lost from its latest backup (a VolumeSnapshot
// whose class names a shared backupPool), under the same name, on another node. Every
// step can be run again: the state is in the cluster (the claim, its old PV's
// annotation, the new claim's annotations), so a rerun after an interruption finishes
// the job. Choosing the backup is in recover_backup.go.

const (
	// annRecoveredFrom marks a claim recreated from a backup: the snapshot's name.
	annRecoveredFrom = "berth.csi.io/recovered-from"
	// annRecoverClaim, on the old PV, records the claim to recreate (claimRecord), so
	// that a rerun after the claim's deletion can still create it.
	annRecoverClaim = "berth.csi.io/recover-claim"
	// annSelectedNode is where the per-node external-provisioner provisions a claim
	// of a WaitForFirstConsumer class.
	annSelectedNode = mover.AnnSelectedNode
)

// Why recover refused; tests and callers match these with errors.Is.
var (
	ErrClaimNotFound = errors.New("claim not found")
	ErrNotBound      = errors.New("claim not bound")
	ErrNotOurs       = errors.New("volume of another driver")
	ErrSharedVolume  = errors.New("volume of a shared pool")
	ErrNodeReady     = errors.New("node is Ready")
	ErrBadTarget     = errors.New("bad target node")
	ErrNoBackup      = errors.New("no backup")
	ErrNotBackup     = errors.New("not a backup")
	ErrClaimInUse    = errors.New("claim in use on another node")
	ErrTimeout       = errors.New("timed out")
)

// recoverError is a message for the operator that errors.Is matches to its kind.
type recoverError struct {
	kind error
	msg  string
}

func (e *recoverError) Error() string { return e.msg }
func (e *recoverError) Unwrap() error { return e.kind }

func refuse(kind error, format string, a ...any) error {
	return &recoverError{kind: kind, msg: fmt.Sprintf(format, a...)}
}

type recoverOptions struct {
	to, snapshot string
	force        bool
	timeout      time.Duration
}

// RecoverReport is recover's structured output.
type RecoverReport struct {
	Claim             string    `json:"claim"`
	LostNode          string    `json:"lostNode"`
	TargetNode        string    `json:"targetNode"`
	Snapshot          string    `json:"snapshot"`
	SnapshotHandle    string    `json:"snapshotHandle"`
	BackupTime        time.Time `json:"backupTime"`
	LostWindowSeconds int64     `json:"lostWindowSeconds"`
	OldPV             string    `json:"oldPV"`
	NewPV             string    `json:"newPV"`
	DeletedPods       []string  `json:"deletedPods"`
	// Resumed: the claim had been recreated by an earlier run, which this one finished.
	Resumed bool `json:"resumed,omitempty"`
}

func newRecoverCommand(o *Options) *cobra.Command {
	var ro recoverOptions
	if o.Poll == 0 {
		o.Poll = 2 * time.Second
	}
	cmd := &cobra.Command{
		Use:   "recover CLAIM --to NODE",
		Short: "Rebuild a claim whose node is lost from its latest backup, on another node",
		Long: `recover recreates the claim CLAIM (same name, labels, class, size) from its latest
backup, a ready VolumeSnapshot whose class names a shared backupPool, provisioned on
node --to. Pods of the claim on the lost node are deleted (their controllers recreate
them), the old PersistentVolume is kept with reclaim policy Retain, and what is lost
is said: the writes after the backup. It refuses when the claim's node is Ready
(unless --force), when the claim is in use on another node, or when there is no backup.
Run it again after an interruption: it finishes the job.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.runIn(cmd, false, func(ctx context.Context, c *Clients, ns string) error {
				return o.recover(ctx, c, ns, args[0], ro)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&ro.to, "to", "", "the node to rebuild the claim on (required)")
	f.StringVar(&ro.snapshot, "snapshot", "", "a VolumeSnapshot to restore instead of the latest backup (it must be a ready backup of the claim)")
	f.BoolVar(&ro.force, "force", false, "proceed although the claim's node is Ready")
	f.DurationVar(&ro.timeout, "timeout", 10*time.Minute, "how long to wait for the old claim to go and the new one to bind")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

// recover runs the steps of docs/operations.md, "Recovering a claim after its node is lost".
func (o *Options) recover(ctx context.Context, c *Clients, ns, name string, ro recoverOptions) error {
	claim := ns + "/" + name
	pvcs := c.Kube.CoreV1().PersistentVolumeClaims(ns)
	pvc, err := pvcs.Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		pvc = nil
	case err != nil:
		return fmt.Errorf("read claim %s: %w", claim, err)
	case isRecovered(pvc) && (pvc.Status.Phase != corev1.ClaimBound || pvc.Annotations[annSelectedNode] == ro.to):
		return o.resume(ctx, c, pvc, ro)
	}

	// Where the claim was, and what to recreate.
	var oldPV *corev1.PersistentVolume
	var record *claimRecord
	if pvc != nil {
		if oldPV, err = boundPV(ctx, c, pvc, o.DriverName); err != nil {
			return err
		}
		record = recordOf(pvc)
	} else {
		if oldPV, record, err = retainedPV(ctx, c, ns, name, false); err != nil {
			return err
		}
		if oldPV == nil {
			return refuse(ErrClaimNotFound, "claim %s not found (and no PersistentVolume of an interrupted recovery records it)", claim)
		}
		fmt.Fprintf(o.ErrOut, "Claim %s is gone: recreating it as PersistentVolume %s recorded it.\n", claim, oldPV.Name)
	}
	lost := mover.PVNode(oldPV)
	if lost == "" {
		return refuse(ErrSharedVolume, "claim %s is on a shared pool and follows its pod; nothing to recover", claim)
	}
	if err := checkNodes(ctx, c, lost, ro); err != nil {
		return err
	}
	b, err := o.chooseBackup(ctx, c, ns, name, ro.snapshot)
	if err != nil {
		return err
	}
	doomed, err := podsOnLostNode(ctx, c, ns, name, lost)
	if err != nil {
		return err
	}

	// From here on the cluster changes.
	r := &RecoverReport{Claim: claim, LostNode: lost, TargetNode: ro.to, OldPV: oldPV.Name, DeletedPods: []string{}}
	for _, p := range doomed {
		err := c.Kube.CoreV1().Pods(ns).Delete(ctx, p, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete pod %s/%s on lost node %s: %w", ns, p, lost, err)
		}
		fmt.Fprintf(o.ErrOut, "Pod %s/%s on node %s deleted.\n", ns, p, lost)
		r.DeletedPods = append(r.DeletedPods, ns+"/"+p)
	}
	if err := retain(ctx, c, oldPV.Name, record); err != nil {
		return err
	}
	if pvc != nil {
		if err := o.deleteClaim(ctx, c, pvc, ro.timeout); err != nil {
			return err
		}
	}
	created, err := pvcs.Create(ctx, newClaim(ns, name, record, b, ro.to), metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create claim %s from snapshot %s: %w", claim, b.name, err)
	}
	fmt.Fprintf(o.ErrOut, "Claim %s created from snapshot %s on node %s; waiting for it to bind.\n", claim, b.name, ro.to)
	return o.finish(ctx, c, created, b, r, ro.timeout)
}

// isRecovered: the claim is one a recover made (step 6 done).
func isRecovered(pvc *corev1.PersistentVolumeClaim) bool {
	ds := pvc.Spec.DataSource
	return ds != nil && ds.Kind == "VolumeSnapshot" && ptr.Deref(ds.APIGroup, "") == vsResource.Group &&
		ds.Name != "" && pvc.Annotations[annRecoveredFrom] == ds.Name
}

// resume finishes an earlier run's recovery: wait and report.
func (o *Options) resume(ctx context.Context, c *Clients, pvc *corev1.PersistentVolumeClaim, ro recoverOptions) error {
	claim := pvc.Namespace + "/" + pvc.Name
	target := pvc.Annotations[annSelectedNode]
	if target != ro.to {
		return refuse(ErrBadTarget, "claim %s is already being recovered on node %s (annotation %s): run again with --to %s", claim, target, annSelectedNode, target)
	}
	fmt.Fprintf(o.ErrOut, "Claim %s was recreated from snapshot %s by an earlier run; waiting for it to bind.\n", claim, pvc.Spec.DataSource.Name)
	r := &RecoverReport{Claim: claim, TargetNode: target, DeletedPods: []string{}, Resumed: true}
	if old, _, err := retainedPV(ctx, c, pvc.Namespace, pvc.Name, true); err == nil && old != nil {
		r.OldPV, r.LostNode = old.Name, mover.PVNode(old)
	}
	b, why, err := o.inspectBackup(ctx, c, pvc.Namespace, pvc.Spec.DataSource.Name, pvc.Name)
	if err != nil {
		return err
	}
	if why != "" {
		fmt.Fprintf(o.ErrOut, "Snapshot %s/%s: %s.\n", pvc.Namespace, b.name, why)
	}
	return o.finish(ctx, c, pvc, b, r, ro.timeout)
}

// boundPV is the PV of a bound claim, which must be the driver's.
func boundPV(ctx context.Context, c *Clients, pvc *corev1.PersistentVolumeClaim, driver string) (*corev1.PersistentVolume, error) {
	claim := pvc.Namespace + "/" + pvc.Name
	if pvc.Spec.VolumeName == "" {
		return nil, refuse(ErrNotBound, "claim %s is not bound to a PersistentVolume (phase %s): no node to recover from", claim, pvc.Status.Phase)
	}
	pv, err := c.Kube.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read PersistentVolume %s of claim %s: %w", pvc.Spec.VolumeName, claim, err)
	}
	if _, ok := orphans.HandleOf(pv, driver); !ok {
		return nil, refuse(ErrNotOurs, "PersistentVolume %s of claim %s is not of driver %s (--driver)", pv.Name, claim, driver)
	}
	return pv, nil
}

// checkNodes: the lost node must not be Ready (but with --force); the target must
// exist and be another node.
func checkNodes(ctx context.Context, c *Clients, lost string, ro recoverOptions) error {
	if ro.to == lost {
		return refuse(ErrBadTarget, "--to %s is the claim's own node: recover rebuilds the claim on another node", ro.to)
	}
	nodes := c.Kube.CoreV1().Nodes()
	n, err := nodes.Get(ctx, lost, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err): // gone: what recover is for
	case err != nil:
		return fmt.Errorf("read node %s: %w", lost, err)
	case mover.NodeReady(n) && !ro.force:
		return refuse(ErrNodeReady, "node %s is Ready: its volumes are there; recover only a claim whose node is lost (or use --force: the writes after the backup are then lost)", lost)
	}
	if _, err := nodes.Get(ctx, ro.to, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		return refuse(ErrBadTarget, "node %s (--to) not found", ro.to)
	} else if err != nil {
		return fmt.Errorf("read node %s: %w", ro.to, err)
	}
	return nil
}

// podsOnLostNode lists the pods of the claim on the lost node; a running pod of the
// claim on another node is a refusal. Unscheduled and finished pods hold nothing.
func podsOnLostNode(ctx context.Context, c *Clients, ns, name, lost string) ([]string, error) {
	list, err := c.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list the pods of namespace %s: %w", ns, err)
	}
	var out []string
	for _, p := range list.Items {
		if !mover.UsesClaim(&p, name) {
			continue
		}
		switch {
		case p.Spec.NodeName == lost:
			out = append(out, p.Name)
		case p.Spec.NodeName == "" || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed:
		default:
			return nil, refuse(ErrClaimInUse, "claim %s/%s is in use by pod %s on node %s: it is not lost", ns, name, p.Name, p.Spec.NodeName)
		}
	}
	return out, nil
}

// claimRecord is what recover keeps of the old claim on its PV (annRecoverClaim).
type claimRecord struct {
	Claim string                           `json:"claim"` // namespace/name
	At    metav1.Time                      `json:"at"`
	Meta  metav1.ObjectMeta                `json:"metadata"` // labels and annotations
	Spec  corev1.PersistentVolumeClaimSpec `json:"spec"`
	// Done: the new claim was bound; a claim deleted since is not recreated from here.
	Done bool `json:"done,omitempty"`
}

// recordOf keeps the claim's labels, annotations but the binding ones (and
// annRecoveredFrom), and the spec a new provisioning needs (mover.RecordClaim).
func recordOf(pvc *corev1.PersistentVolumeClaim) *claimRecord {
	r := mover.RecordClaim(pvc, annRecoveredFrom)
	return &claimRecord{Claim: pvc.Namespace + "/" + pvc.Name,
		Meta: metav1.ObjectMeta{Labels: r.Labels, Annotations: r.Annotations}, Spec: r.Spec}
}

// retainedPV finds the PV an earlier recover of ns/name annotated (the latest one);
// with done false, only a recovery not yet finished.
func retainedPV(ctx context.Context, c *Clients, ns, name string, done bool) (*corev1.PersistentVolume, *claimRecord, error) {
	list, err := c.Kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("list PersistentVolumes: %w", err)
	}
	var pv *corev1.PersistentVolume
	var rec *claimRecord
	for i := range list.Items {
		p := &list.Items[i]
		raw, ok := p.Annotations[annRecoverClaim]
		if !ok {
			continue
		}
		var r claimRecord
		if err := json.Unmarshal([]byte(raw), &r); err != nil || r.Claim != ns+"/"+name || r.Done && !done {
			continue
		}
		if rec == nil || r.At.After(rec.At.Time) {
			pv, rec = p, &r
		}
	}
	return pv, rec, nil
}

// retain sets the old PV's reclaim policy to Retain (its provisioner is gone with the
// node: nothing must try to delete its data) and records the claim on it.
func retain(ctx context.Context, c *Clients, pv string, record *claimRecord) error {
	record.At, record.Done = metav1.Now(), false
	if err := patchRecord(ctx, c, pv, record, corev1.PersistentVolumeReclaimRetain); err != nil {
		return fmt.Errorf("set PersistentVolume %s's reclaim policy to Retain: %w", pv, err)
	}
	return nil
}

// patchRecord writes the record on the PV, and its reclaim policy unless "".
func patchRecord(ctx context.Context, c *Clients, pv string, record *claimRecord, policy corev1.PersistentVolumeReclaimPolicy) error {
	raw, err := json.Marshal(record)
	if err != nil {
		return err
	}
	p := map[string]any{"metadata": map[string]any{"annotations": map[string]string{annRecoverClaim: string(raw)}}}
	if policy != "" {
		p["spec"] = map[string]any{"persistentVolumeReclaimPolicy": policy}
	}
	patch, err := json.Marshal(p)
	if err != nil {
		return err
	}
	_, err = c.Kube.CoreV1().PersistentVolumes().Patch(ctx, pv, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

// deleteClaim deletes the old claim and waits until it is gone.
func (o *Options) deleteClaim(ctx context.Context, c *Clients, pvc *corev1.PersistentVolumeClaim, timeout time.Duration) error {
	claim := pvc.Namespace + "/" + pvc.Name
	pvcs := c.Kube.CoreV1().PersistentVolumeClaims(pvc.Namespace)
	pre := metav1.Preconditions{UID: &pvc.UID}
	if err := pvcs.Delete(ctx, pvc.Name, metav1.DeleteOptions{Preconditions: &pre}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete claim %s: %w", claim, err)
	}
	fmt.Fprintf(o.ErrOut, "Claim %s deleted; waiting for it to be gone.\n", claim)
	var finalizers []string
	err := wait.PollUntilContextTimeout(ctx, o.Poll, timeout, true, func(ctx context.Context) (bool, error) {
		cur, err := pvcs.Get(ctx, pvc.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) || err == nil && cur.UID != pvc.UID {
			return true, nil
		}
		if err != nil {
			return false, fmt.Errorf("read claim %s: %w", claim, err)
		}
		finalizers = cur.Finalizers
		return false, nil
	})
	if wait.Interrupted(err) && ctx.Err() == nil {
		return refuse(ErrTimeout, "claim %s still there after %s, held by finalizers %s (kubernetes.io/pvc-protection: a pod still uses it)",
			claim, timeout, strings.Join(finalizers, ", "))
	}
	return err
}

// newClaim is the claim to create: the record's, restored from the backup on node.
func newClaim(ns, name string, record *claimRecord, b *backup, node string) *corev1.PersistentVolumeClaim {
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: record.Meta.Labels, Annotations: map[string]string{}},
		Spec:       *record.Spec.DeepCopy(),
	}
	for k, v := range record.Meta.Annotations {
		pvc.Annotations[k] = v
	}
	pvc.Annotations[annSelectedNode] = node
	pvc.Annotations[annRecoveredFrom] = b.name
	pvc.Spec.DataSource = &corev1.TypedLocalObjectReference{APIGroup: ptr.To(vsResource.Group), Kind: "VolumeSnapshot", Name: b.name}
	if b.restoreSize != nil {
		req := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
		if req.Cmp(*b.restoreSize) < 0 {
			if pvc.Spec.Resources.Requests == nil {
				pvc.Spec.Resources.Requests = corev1.ResourceList{}
			}
			pvc.Spec.Resources.Requests[corev1.ResourceStorage] = b.restoreSize.DeepCopy()
		}
	}
	return pvc
}

// finish waits for the new claim to bind and reports.
func (o *Options) finish(ctx context.Context, c *Clients, pvc *corev1.PersistentVolumeClaim, b *backup, r *RecoverReport, timeout time.Duration) error {
	claim := pvc.Namespace + "/" + pvc.Name
	pvcs := c.Kube.CoreV1().PersistentVolumeClaims(pvc.Namespace)
	cur := pvc
	err := wait.PollUntilContextTimeout(ctx, o.Poll, timeout, true, func(ctx context.Context) (bool, error) {
		got, err := pvcs.Get(ctx, pvc.Name, metav1.GetOptions{})
		if err != nil {
			return false, fmt.Errorf("read claim %s: %w", claim, err)
		}
		cur = got
		return got.Status.Phase == corev1.ClaimBound, nil
	})
	if wait.Interrupted(err) && ctx.Err() == nil {
		return refuse(ErrTimeout, "claim %s not bound after %s (phase %s): see kubectl describe pvc %s -n %s, and the csi-provisioner of node %s; run recover again to keep waiting",
			claim, timeout, cur.Status.Phase, pvc.Name, pvc.Namespace, r.TargetNode)
	}
	if err != nil {
		return err
	}
	r.NewPV = cur.Spec.VolumeName
	if old, record, err := retainedPV(ctx, c, pvc.Namespace, pvc.Name, false); err == nil && old != nil {
		record.Done = true
		if err := patchRecord(ctx, c, old.Name, record, ""); err != nil {
			fmt.Fprintf(o.ErrOut, "Warning: PersistentVolume %s: the recovery is done but could not be marked so: %v\n", old.Name, err)
		}
	}
	r.Snapshot, r.SnapshotHandle, r.BackupTime = b.name, b.handle, b.created
	at := cur.CreationTimestamp.Time
	if at.IsZero() {
		at = time.Now()
	}
	if !b.created.IsZero() {
		r.LostWindowSeconds = int64(at.Sub(b.created).Seconds())
	}
	return o.writeRecover(r)
}

func (o *Options) writeRecover(r *RecoverReport) error {
	if o.Output != OutputTable && o.Output != "table" {
		return writeStructured(o.Out, o.Output, r)
	}
	w := o.Out
	fmt.Fprintf(w, "Claim %s recovered on node %s from snapshot %s (%s).\n", r.Claim, r.TargetNode, r.Snapshot, orDash(r.SnapshotHandle))
	window := time.Duration(r.LostWindowSeconds) * time.Second
	fmt.Fprintf(w, "  lost:         writes after %s, %s before the recovery\n", r.BackupTime.UTC().Format(time.RFC3339), window)
	fmt.Fprintf(w, "  lost node:    %s\n", orDash(r.LostNode))
	fmt.Fprintf(w, "  new volume:   %s\n", orDash(r.NewPV))
	if r.OldPV != "" {
		fmt.Fprintf(w, "  old volume:   %s kept (reclaim policy Retain): delete it with kubectl delete pv %s once node %s is gone for good\n",
			r.OldPV, r.OldPV, r.LostNode)
	}
	pods := "none"
	if len(r.DeletedPods) > 0 {
		pods = strings.Join(r.DeletedPods, ", ") + " (their controllers recreate them on the new claim)"
	}
	if r.Resumed {
		pods = "(by the earlier run)"
	}
	fmt.Fprintf(w, "  pods deleted: %s\n", pods)
	return nil
}
