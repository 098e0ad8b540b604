package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A restore on the copy fallback (the dir pool, no reflinks) that lasts longer than
// the provisioner's --timeout (15 s in hack/e2e-values.yaml) completes: the copy goes
// on in the driver, each call answers Aborted with its progress, and a retry after it
// ends gets the volume. BERTH_E2E_LONG_RESTORE_GIB sets the data size (default 5,
// about 20 s of copy on this machine's disk;
// skipped when the pool's filesystem cannot hold it three times over: source,
// snapshot, restore).
// provisionerTimeout is the csi-provisioner --timeout hack/e2e-values.yaml sets.
const provisionerTimeout = 15 * time.Second

func TestLongRestore(t *testing.T) {
	// Alone: its 5 GiB volume and restore on this machine's disk change the capacity
	// the scheduler scores nodes by, so pods of the external suite's snapshot specs, run
	// beside it, landed on another node than their snapshot's (docs/e2e.md).
	c := setup(t, alone)
	gib := 5
	if s := os.Getenv("BERTH_E2E_LONG_RESTORE_GIB"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("BERTH_E2E_LONG_RESTORE_GIB=%q: want a positive integer", s)
		}
		gib = n
	}
	var st unix.Statfs_t
	if err := unix.Statfs(defaultPool, &st); err != nil {
		t.Fatal(err)
	}
	if free := int64(st.Bavail) * st.Bsize; free < int64(3*gib+2)<<30 {
		t.Skipf("%s has %d GiB free; a %d GiB restore needs %d", defaultPool, free>>30, gib, 3*gib+2)
	}
	size := fmt.Sprintf("%dGi", gib+1)

	c.apply(pvc("src", "berth", size, "Filesystem"))
	c.apply(podOn("writer", "src", fmt.Sprintf("dd if=/dev/zero of=/data/blob bs=16M count=%d && echo marker > /data/marker && sync", gib*64), "Never"))
	c.waitPhase("writer", "Succeeded", 10*time.Minute)
	c.kubectl("delete", "pod", "writer", "--wait=true")
	c.snapshot("snap", "src", 15*time.Minute)

	start := time.Now()
	c.apply(claimFrom("restored", "berth", size, "VolumeSnapshot", "snap"))
	c.apply(podOn("reader", "restored", "cat /data/marker && stat -c %s /data/blob", "Never"))
	c.waitFor("restored claim Bound", 15*time.Minute, func() bool {
		out, _ := c.try("get", "pvc", "restored", "-o", "jsonpath={.status.phase}")
		return out == "Bound"
	})
	bound := time.Since(start)
	c.waitPhase("reader", "Succeeded", 5*time.Minute)
	if got, want := strings.Fields(c.kubectl("logs", "reader")), []string{"marker", strconv.Itoa(gib << 30)}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("restored claim reads %q, want %q", got, want)
	}
	events := c.kubectl("get", "events", "--field-selector", "involvedObject.name=restored", "-o", "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}")
	inProgress := strings.Count(events, "in the background")
	// A copy that outlasts the provisioner's call must have been answered "in
	// progress" (Aborted) meanwhile. On a quiet machine the copy may end inside the
	// first call's own wait (a few seconds): then the claim is Bound in one call and
	// the timeout path is not exercised here (pkg/storage's TestRestoreCopiesInBackground
	// and pkg/controller's TestCreateVolumeCopyInBackground prove it deterministically).
	if bound > provisionerTimeout && inProgress == 0 {
		t.Errorf("the restore took %v, longer than the provisioner's %v timeout, and no event says the copy ran in the background:\n%s",
			bound.Round(time.Second), provisionerTimeout, events)
	}
	if inProgress == 0 {
		t.Logf("the copy ended within the first call (%v): faster than the provisioner's %v timeout on this machine", bound.Round(time.Second), provisionerTimeout)
	}
	timeout := c.kubectlNS(driverNS, "get", "ds", nodeDS, "-o", `jsonpath={.spec.template.spec.containers[?(@.name=="csi-provisioner")].args}`)
	t.Logf("%d GiB restored on the copy fallback, claim Bound %v after it was created (%d events of calls answered Aborted, copy in progress); provisioner args %s",
		gib, bound.Round(time.Second), inProgress, timeout)
}
