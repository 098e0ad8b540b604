package mover

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/dynamic"
	"k8s.io/klog/v2"
)

// Why a move fails; tests and callers match these with errors.Is.
var (
	ErrClaimNotFound = errors.New("claim not found")
	ErrNotBound      = errors.New("claim not bound")
	ErrNotOurs       = errors.New("volume of another driver")
	ErrSharedVolume  = errors.New("volume of a shared pool")
	ErrBadTarget     = errors.New("bad target node")
	ErrPodNotOwned   = errors.New("pod not owned by a StatefulSet or a Deployment")
	ErrConflict      = errors.New("object not the move's")
	ErrBadSpec       = errors.New("invalid spec")
	ErrScaleDeletes  = errors.New("owner deletes its claims when scaled down")
)

// reasonOf is the CamelCase reason of a failure's kind, in status.reason.
func reasonOf(kind error) string {
	switch kind {
	case ErrClaimNotFound:
		return "ClaimNotFound"
	case ErrNotBound:
		return "ClaimNotBound"
	case ErrNotOurs:
		return "NotOurs"
	case ErrSharedVolume:
		return "SharedVolume"
	case ErrBadTarget:
		return "BadTarget"
	case ErrPodNotOwned:
		return "PodNotOwned"
	case ErrConflict:
		return "Conflict"
	case ErrScaleDeletes:
		return "ScaleDeletesClaim"
	}
	return "Invalid"
}

// failure is a reason for the move to fail (and roll back, before Switching), with
// a message for the operator; errors.Is matches its kind. Any other error is the
// API's, and is retried.
type failure struct {
	kind error
	msg  string
}

func (e *failure) Error() string { return e.msg }
func (e *failure) Unwrap() error { return e.kind }

func fail(kind error, format string, a ...any) error {
	return &failure{kind: kind, msg: fmt.Sprintf(format, a...)}
}

// Mover advances VolumeMoves. Sync runs one move as far as it can go without
// waiting; Run (run.go) calls it for every move, again while it waits.
type Mover struct {
	Cluster Cluster
	// Dynamic reaches the VolumeMoves.
	Dynamic dynamic.Interface
	// Driver is the CSI driver name whose claims are moved.
	Driver string
	// Poll is how soon a waiting move is looked at again.
	Poll time.Duration
	// CleanupWait bounds the wait for the source PV's deletion in Cleaning.
	CleanupWait time.Duration
	// Image is the driver's image, run by the read-back pod of a claim moved
	// without pods (readback.go); "" keeps such a claim's source instead.
	Image string
	// Now is the clock (tests set it).
	Now func() time.Time
}

// DefaultPoll and DefaultCleanupWait are the Mover's defaults. A move waits on
// the objects it changed (pods gone, claims bound) by reading them again every
// poll: short, as the waits of Stopping, Switching and Starting add up to the
// pods' downtime.
const (
	DefaultPoll        = time.Second
	DefaultCleanupWait = 5 * time.Minute
)

func (m *Mover) now() metav1.Time {
	if m.Now != nil {
		return metav1.NewTime(m.Now().UTC().Truncate(time.Second))
	}
	return metav1.NewTime(time.Now().UTC().Truncate(time.Second))
}

// pollIn is how soon a move waiting in phase is looked at again: a quarter of the
// poll while its pods are down (Stopping to Starting), where each wait adds to the
// downtime.
func (m *Mover) pollIn(phase Phase) time.Duration {
	if phase == PhaseStopping || phase.forwardOnly() && phase != PhaseCleaning {
		return m.poll() / 4
	}
	return m.poll()
}

// nowMicro is now to the microsecond, for the downtime's ends.
func (m *Mover) nowMicro() metav1.MicroTime {
	if m.Now != nil {
		return metav1.NewMicroTime(m.Now().UTC().Truncate(time.Microsecond))
	}
	return metav1.NewMicroTime(time.Now().UTC().Truncate(time.Microsecond))
}

func (m *Mover) poll() time.Duration {
	if m.Poll > 0 {
		return m.Poll
	}
	return DefaultPoll
}

// Sync advances move ns/name until it waits for something or finishes. It returns
// how soon to call it again (0: not before the move changes) or the API's error,
// after which the caller retries with backoff.
func (m *Mover) Sync(ctx context.Context, ns, name string) (time.Duration, error) {
	u, err := m.moves().Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read VolumeMove %s/%s: %w", ns, name, err)
	}
	mv, err := FromUnstructured(u)
	if err != nil {
		return 0, err
	}
	logger := klog.FromContext(ctx).WithValues("volumeMove", ns+"/"+name, "claim", mv.Spec.Claim, "toNode", mv.Spec.ToNode)
	for range 100 {
		if mv.Status.Phase.Finished() {
			return 0, m.finalize(ctx, mv, false)
		}
		if err := m.finalize(ctx, mv, true); err != nil {
			return 0, err
		}
		if mv.DeletionTimestamp != nil && !mv.Status.Phase.forwardOnly() && mv.Status.Failure == "" {
			msg := "the VolumeMove was deleted: the move is cancelled"
			mv.Status.Failure, mv.Status.Reason, mv.Status.Message = msg, "Cancelled", "Rolling back: "+msg
			logger.Info("Move cancelled, rolling back", "phase", mv.Status.Phase)
			if err := m.persist(ctx, mv); err != nil {
				return 0, err
			}
		}
		phase, before := mv.Status.Phase, statusOf(mv)
		wait, err := m.step(ctx, mv)
		var f *failure
		switch {
		case errors.As(err, &f) && !phase.forwardOnly() && mv.Status.Failure == "":
			mv.Status = *before
			mv.Status.Failure, mv.Status.Reason = f.msg, reasonOf(f.kind)
			mv.Status.Message = "Rolling back: " + f.msg
			logger.Info("Move failed, rolling back", "phase", phase, "reason", f.msg)
			m.event(ctx, mv, corev1.EventTypeWarning, "Failing", mv.Status.Message)
		case err != nil:
			// The API's error, or a forward-only phase's obstacle: said, then retried.
			mv.Status = *before
			if msg := "Retrying: " + err.Error(); msg != mv.Status.Message {
				mv.Status.Message = msg
				_ = m.persist(ctx, mv)
			}
			return 0, err
		case wait != "":
			if wait != mv.Status.Message {
				mv.Status.Message = wait
				logger.V(4).Info("Move waits", "phase", phase, "for", wait)
				if err := m.persist(ctx, mv); err != nil {
					return 0, err
				}
			}
			return m.pollIn(phase), nil
		case reflect.DeepEqual(before, &mv.Status):
			return 0, fmt.Errorf("VolumeMove %s/%s: phase %s made no progress (a bug)", ns, name, phase)
		}
		if err := m.persist(ctx, mv); err != nil {
			return 0, err
		}
		if mv.Status.Phase != phase {
			logger.V(2).Info("Move phase", "from", phase, "phase", mv.Status.Phase, "message", mv.Status.Message)
			typ := corev1.EventTypeNormal
			if mv.Status.Phase == PhaseFailed {
				typ = corev1.EventTypeWarning
			}
			m.event(ctx, mv, typ, string(mv.Status.Phase), mv.Status.Message)
		}
	}
	return m.poll(), nil
}

// statusOf is a deep copy of the move's status.
func statusOf(mv *VolumeMove) *Status {
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&mv.Status)
	out := &Status{}
	if err == nil {
		err = runtime.DefaultUnstructuredConverter.FromUnstructured(obj, out)
	}
	if err != nil {
		panic(fmt.Sprintf("copy a VolumeMove status: %v", err))
	}
	return out
}

// step runs the move's phase once: "" and nil when the status changed (it is then
// written before the next step), what it waits for, or why it fails.
func (m *Mover) step(ctx context.Context, mv *VolumeMove) (string, error) {
	if mv.Status.Failure != "" {
		return m.rollback(ctx, mv)
	}
	switch mv.Status.Phase {
	case "", PhasePending:
		return m.pending(ctx, mv)
	case PhaseCopying:
		return m.copying(ctx, mv)
	case PhaseStopping:
		return m.stopping(ctx, mv)
	case PhaseSwitching:
		return m.switching(ctx, mv)
	case PhaseStarting:
		return m.starting(ctx, mv)
	case PhaseCleaning:
		return m.cleaning(ctx, mv)
	}
	return "", fail(ErrBadSpec, "unknown phase %q", mv.Status.Phase)
}

// rollback undoes what a move that had not reached Switching made: the copy's PV
// is set to Delete and released (undoTarget), the temporary claim goes, the owners
// are scaled back.
func (m *Mover) rollback(ctx context.Context, mv *VolumeMove) (string, error) {
	st := &mv.Status
	if st.TargetPV != "" {
		if err := m.undoTarget(ctx, mv); err != nil {
			return "", err
		}
	}
	if st.TempClaim != "" {
		if _, err := m.deleteTempClaim(ctx, mv); err != nil {
			return "", err
		}
	}
	if st.StoppedAt != nil {
		if err := m.scaleBack(ctx, mv); err != nil {
			return "", err
		}
	}
	now := m.now()
	st.Phase, st.FinishedAt, st.Message = PhaseFailed, &now, st.Failure
	return "", nil
}

// Finalizer keeps a deleted VolumeMove until its move is finished: rolled back
// (the deletion cancels a move before Switching) or, from Switching on, done.
const Finalizer = "berth.csi.io/mover"

// finalize adds the finalizer to an unfinished move (on, unless it is being
// deleted) or removes it (off).
func (m *Mover) finalize(ctx context.Context, mv *VolumeMove, on bool) error {
	has := slices.Contains(mv.Finalizers, Finalizer)
	if on == has || on && mv.DeletionTimestamp != nil {
		return nil
	}
	fins := slices.DeleteFunc(slices.Clone(mv.Finalizers), func(f string) bool { return f == Finalizer })
	if on {
		fins = append(fins, Finalizer)
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"finalizers": fins, "resourceVersion": mv.ResourceVersion}})
	if err != nil {
		return err
	}
	out, err := m.moves().Namespace(mv.Namespace).Patch(ctx, mv.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) && !on {
		return nil
	}
	if err != nil {
		return fmt.Errorf("set the finalizers of VolumeMove %s/%s to %v: %w", mv.Namespace, mv.Name, fins, err)
	}
	got, err := FromUnstructured(out)
	if err != nil {
		return err
	}
	*mv = *got
	return nil
}

// persist writes the status, and takes the object written (its resourceVersion).
func (m *Mover) persist(ctx context.Context, mv *VolumeMove) error {
	u, err := mv.ToUnstructured()
	if err != nil {
		return err
	}
	out, err := m.moves().Namespace(mv.Namespace).UpdateStatus(ctx, u, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("write the status of VolumeMove %s/%s: %w", mv.Namespace, mv.Name, err)
	}
	got, err := FromUnstructured(out)
	if err != nil {
		return err
	}
	*mv = *got
	return nil
}

// event records an Event on the move; a failure to is logged, never fatal.
func (m *Mover) event(ctx context.Context, mv *VolumeMove, typ, reason, msg string) {
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", mv.Name, time.Now().UnixNano()), Namespace: mv.Namespace},
		InvolvedObject: corev1.ObjectReference{APIVersion: Resource.GroupVersion().String(), Kind: Kind,
			Namespace: mv.Namespace, Name: mv.Name, UID: mv.UID, ResourceVersion: mv.ResourceVersion},
		Reason: reason, Message: truncate(msg, 1024), Type: typ,
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		Source: corev1.EventSource{Component: "berth-mover"},
	}
	if err := m.Cluster.CreateEvent(ctx, ev); err != nil {
		klog.FromContext(ctx).V(2).Info("Event not recorded", "volumeMove", mv.Namespace+"/"+mv.Name, "reason", reason, "err", err)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// moveLabel is the value of the temporary claim's label LabelMove: the move's
// name, or a digest of it when it is no label value.
func moveLabel(mv *VolumeMove) string {
	if len(validation.IsValidLabelValue(mv.Name)) == 0 {
		return mv.Name
	}
	return "h-" + digest(mv.Name)[:32]
}

// moveRef is the value of the annotation AnnMove: <namespace>/<move name>.
func moveRef(mv *VolumeMove) string { return mv.Namespace + "/" + mv.Name }

// TempClaimName is the temporary claim of a move: derived from the move's name and
// UID (a move made again under the same name has another).
func TempClaimName(mv *VolumeMove) string {
	base := strings.TrimRight(truncate(mv.Name, 200), "-.")
	return base + "-move-" + digest(mv.Namespace + "/" + mv.Name + "/" + string(mv.UID))[:8]
}

func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func (m *Mover) moves() dynamic.NamespaceableResourceInterface { return m.Dynamic.Resource(Resource) }
