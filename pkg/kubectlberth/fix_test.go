package kubectlberth

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clienttesting "k8s.io/client-go/testing"
)

// orphanWorld is node-a with team-a/data and an orphan, in both reads.
func orphanWorld(t *testing.T) *world {
	t.Helper()
	w := newWorld(t, nodePod("berth-node-a", "node-a", corev1.PodRunning),
		pv("pv-data", idData, "node-a", "team-a", "data", "1Gi", corev1.VolumeBound))
	text := newExposition().pool(healthyPool("node-a")).
		volume(VolumeFacts{ID: idData, Pool: "default", Namespace: "team-a", Claim: "data", CapacityBytes: gib, Healthy: true}).
		volume(VolumeFacts{ID: idOrphan, Pool: "default", Namespace: "old", Claim: "retained", CapacityBytes: gib, Healthy: true}).
		String()
	w.serve("berth-node-a", 9811, text)
	return w
}

var trashOrphanCmd = "kube-system/berth-node-a berth /csi-driver trash-orphan --endpoint unix:///csi/csi.sock --volume-id " + idOrphan

func TestFix(t *testing.T) {
	for _, tc := range []struct {
		name      string
		args      []string
		stdin     string
		execCode  int
		pvBetween bool // a PV naming the orphan appears after doctor's reads
		wantExec  bool
		wantErr   error
		wantMsg   string
	}{
		{name: "yes", args: []string{"--fix", "--yes"}, wantExec: true, wantMsg: "moved to the trash of pool default on node node-a"},
		{name: "asked, answered y", args: []string{"--fix"}, stdin: "y\n", wantExec: true, wantMsg: "moved to the trash"},
		{name: "asked, answered n", args: []string{"--fix"}, stdin: "n\n", wantErr: ErrAttention, wantMsg: "kept."},
		{name: "asked, no terminal input", args: []string{"--fix"}, stdin: "", wantErr: ErrAttention, wantMsg: "kept."},
		{name: "a PV names it by the time of removal", args: []string{"--fix", "--yes"}, pvBetween: true, wantErr: ErrAttention,
			wantMsg: "kept: PersistentVolume pv-late names it now"},
		{name: "driver refuses (published)", args: []string{"--fix", "--yes"}, execCode: trashOrphanExitRefused, wantExec: true,
			wantErr: ErrAttention, wantMsg: "kept: the driver refused"},
		{name: "trash-orphan fails", args: []string{"--fix", "--yes"}, execCode: 1, wantExec: true, wantErr: ErrAttention, wantMsg: "failed (exit 1)"},
		{name: "without --fix nothing is removed", wantErr: ErrAttention},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := orphanWorld(t)
			w.exec.code = tc.execCode
			if tc.pvBetween {
				lists := 0
				w.kube.PrependReactor("list", "persistentvolumes", func(clienttesting.Action) (bool, runtime.Object, error) {
					lists++
					if lists == 2 { // the re-check right before the removal
						late := pv("pv-late", idOrphan, "node-a", "old", "retained", "1Gi", corev1.VolumeBound)
						if err := w.kube.Tracker().Add(late); err != nil {
							t.Error(err)
						}
					}
					return false, nil, nil
				})
			}
			out, errOut, err := w.run(t, tc.stdin, append([]string{"doctor"}, tc.args...)...)
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("err = %v, want %v\n%s%s", err, tc.wantErr, out, errOut)
			}
			var calls []string
			for _, c := range w.exec.calls {
				calls = append(calls, strings.Join(c, " "))
			}
			if tc.wantExec != (len(calls) == 1) || tc.wantExec && calls[0] != trashOrphanCmd {
				t.Errorf("exec calls %q, want %v of %q", calls, tc.wantExec, trashOrphanCmd)
			}
			if !strings.Contains(errOut, tc.wantMsg) {
				t.Errorf("stderr lacks %q:\n%s", tc.wantMsg, errOut)
			}
			if tc.wantErr == nil && !strings.Contains(out, "[fixed] Orphan") {
				t.Errorf("the orphan not shown fixed:\n%s", out)
			}
		})
	}
}

// TestFixNeverTouchesNamedVolumes: --fix --yes on the fixture cluster runs trash-orphan
// for the orphan alone, never for a volume a PV names (missing, unhealthy, released).
func TestFixNeverTouchesNamedVolumes(t *testing.T) {
	w := fixture(t)
	_, _, err := w.run(t, "", "doctor", "--fix", "--yes")
	if !errors.Is(err, ErrAttention) {
		t.Errorf("err = %v, want ErrAttention (the other findings stay)", err)
	}
	if len(w.exec.calls) != 1 || strings.Join(w.exec.calls[0], " ") != trashOrphanCmd {
		t.Errorf("exec calls %q, want the orphan's trash-orphan alone", w.exec.calls)
	}
}
