package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMoveDowntime measures what the two phases of kubectl berth move buy (the
// issue's yardstick: pod downtime of a 10 GiB move ÷ the time of a full copy of it,
// target <= 0.1), in one run: a StatefulSet's claim on this machine's node holding
// BERTH_E2E_MOVE_GIB GiB (default 10) in 64 MiB files of random data, its pod
// appending a line a second, is moved to berth-node-2. The full copy is the Copying
// phase (the clone pulled over the channel while the pod runs: copiedAt − startedAt),
// the downtime the pod's stop to its start on the target (downtimeSeconds, which
// includes the resync of what changed meanwhile). Needs room for the data on
// berth-node-2, whose disk is 3 GiB unless the cluster was made with NODE2_DISK_MB
// (e.g. NODE2_DISK_MB=13312 NODES=3 hack/cluster-up.sh); skipped otherwise.
func TestMoveDowntime(t *testing.T) {
	if os.Getenv("BERTH_E2E_BENCH") != "1" || os.Getenv("BERTH_E2E") != "1" {
		t.Skip("measurement on the cluster: run with BERTH_E2E=1 BERTH_E2E_BENCH=1 (make e2e-bench)")
	}
	c := setup(t, alone)
	nodes := c.needNodes(2)
	from, to := nodes[0], nodes[1]
	gib, err := strconv.Atoi(envOr("BERTH_E2E_MOVE_GIB", "10"))
	if err != nil || gib < 1 {
		t.Fatalf("BERTH_E2E_MOVE_GIB: a number of GiB")
	}
	if free := c.freeBytes(to, "/var/lib/berth"); free < int64(gib)<<30+512<<20 {
		t.Skipf("node %s has %d MiB free, not room for %d GiB: make the cluster with NODE2_DISK_MB=%d", to, free>>20, gib, (gib+3)*1024)
	}
	bin := buildKubectlBerth(t)
	files := gib * 16
	script := fmt.Sprintf(`set -e
if [ ! -f /data/done ]; then
  for i in $(seq %d); do head -c 67108864 /dev/urandom > /data/f$i; done
  sync; touch /data/done
fi
echo written
# Stops at once when asked (SIGTERM), as a server does: the grace period is the
# workload's own, not the move's.
trap 'exit 0' TERM
while :; do date >> /data/log; sleep 1 & wait $!; done`, files)
	size := fmt.Sprintf("%dMi", gib*1024+256)
	c.apply(claimOnNode("data-big-0", from, size) + "---\n" +
		strings.Replace(strings.Replace(statefulWriter("big", "0"), "storage: 1Gi", "storage: "+size, 1),
			quote("MIB=0\n"+moveWriter), quote(script), 1))
	c.waitFor("the data written", 30*time.Minute, func() bool {
		out, _ := c.try("logs", "big-0")
		return strings.Contains(out, "written")
	})

	cmd := exec.Command(bin, "move", "-n", c.ns, "data-big-0", "--to", to, "--timeout", "60m", "-o", "json")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl berth move: %v\n%s\n%s", err, out.String(), errOut.String())
	}
	at := func(field string) time.Time {
		v := c.jsonpath("volumemove/data-big-0", "{.status."+field+"}")
		ts, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			t.Fatalf("status.%s %q: %v", field, v, err)
		}
		return ts
	}
	// stoppedAt and runningAt are kept to the microsecond.
	copyTime, down := at("copiedAt").Sub(at("startedAt")), at("runningAt").Sub(at("stoppedAt"))
	if copyTime <= 0 || down <= 0 {
		t.Fatalf("downtime %s, copy %s", down, copyTime)
	}
	c.waitReady("big-0", 5*time.Minute)
	t.Logf("%d GiB moved from %s to %s: full copy %s while the pod ran, %s without the pod", gib, from, to, copyTime, down)
	fmt.Printf("figure: move%dg-copy %.1f s\n", gib, copyTime.Seconds())
	fmt.Printf("figure: move%dg-downtime %.2f s\n", gib, down.Seconds())
	fmt.Printf("figure: move%dg-downtime-over-copy %.3f x\n", gib, down.Seconds()/copyTime.Seconds())
	c.kubectl("delete", "statefulset", "big", "--wait=true")
}
