package grouplabel

import (
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/klog/v2/ktesting"
)

// static is a pre-provisioned VolumeSnapshotContent naming snapshot handle, as
// Velero's CSI restore makes one.
func static(name, drv, handle string) *unstructured.Unstructured {
	c := member(name, drv, "", false)
	c.Object["spec"].(map[string]any)["source"] = map[string]any{"snapshotHandle": handle}
	return c
}

// A pre-provisioned content of a shared pool's snapshot (a backup's) is labelled
// for the first node that syncs it; one of a node-local pool, of another driver,
// or seen by a labeller that serves no shared pool is left alone.
func TestSyncStaticContent(t *testing.T) {
	const backup = "s1-sh-0123456789abcdef0123456789abcdef"
	tests := []struct {
		name      string
		content   *unstructured.Unstructured
		pools     []string
		want      Outcome
		wantLabel string
	}{
		{"backup in a shared pool", static("m1", driver, backup), []string{"sh"}, Labelled, "node-a"},
		{"snapshot of a node-local pool", static("m1", driver, "s1-img-0123456789abcdef0123456789abcdef"), []string{"sh"}, Ignored, ""},
		{"no shared pool here", static("m1", driver, backup), nil, Ignored, ""},
		{"not a Berth handle", static("m1", driver, "snap-1"), []string{"sh"}, Ignored, ""},
		{"another driver's", static("m1", "other.csi.io", backup), []string{"sh"}, Ignored, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, volumes(), tc.content)
			_, ctx := ktesting.NewTestContext(t)
			for _, l := range f.labels {
				l.SharedPools = tc.pools
			}
			if got, err := f.labels["node-a"].SyncMember(ctx, f.getOf(t, MemberResource, "m1")); err != nil || got != tc.want {
				t.Errorf("node-a: %s, %v; want %s", got, err, tc.want)
			}
			// node-b comes second: the content is labelled, or still not its to take.
			if got, err := f.labels["node-b"].SyncMember(ctx, f.getOf(t, MemberResource, "m1")); err != nil || got != Ignored {
				t.Errorf("node-b: %s, %v; want ignored", got, err)
			}
			if got := f.getOf(t, MemberResource, "m1").GetLabels()[ManagedByLabel]; got != tc.wantLabel {
				t.Errorf("label %q, want %q", got, tc.wantLabel)
			}
		})
	}
}
