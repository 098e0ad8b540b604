package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// moveWriter fills the claim once with MIB MiB of random data (big), then appends
// a counter to /data/log forever, each line flushed before it is acknowledged on
// standard output ("ack N"): a write acknowledged is one the volume must keep.
// Started again, it goes on from the last line it finds; asked to stop (SIGTERM), it
// stops at once, between two writes, as a server does.
const moveWriter = `set -e
trap 'exit 0' TERM
[ -f /data/big ] || { head -c $((MIB*1048576)) /dev/urandom > /data/big.tmp; sync; mv /data/big.tmp /data/big; }
i=$(tail -n 1 /data/log 2>/dev/null || echo 0)
echo "start $i"
while :; do i=$((i+1)); echo $i >> /data/log; sync; echo "ack $i"; sleep 0.05; done`

// statefulWriter is a StatefulSet of one replica running moveWriter, whose claim
// data-NAME-0 the test makes first (so that it lands on the node it chooses).
func statefulWriter(name, mib string) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: StatefulSet
metadata: {name: %[1]s}
spec:
  serviceName: %[1]s
  replicas: 1
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata: {labels: {app: %[1]s}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: main
        image: %[2]s
        imagePullPolicy: IfNotPresent
        command: ["/bin/sh", "-c", %[3]s]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      storageClassName: berth
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
`, name, busybox, quote("MIB="+mib+"\n"+moveWriter))
}

// claimOnNode is a claim of class berth provisioned on node (the per-node
// provisioner's selected-node annotation, as the scheduler sets it).
func claimOnNode(name, node, size string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: %s
  annotations: {volume.kubernetes.io/selected-node: %s}
spec:
  storageClassName: berth
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: %s}}
`, name, node, size)
}

// buildKubectlBerth builds cmd/kubectl-berth into a temporary directory.
func buildKubectlBerth(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kubectl-berth")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/kubectl-berth").CombinedOutput(); err != nil {
		t.Fatalf("build kubectl-berth: %v\n%s", err, out)
	}
	return bin
}

// acks follows a pod's log and keeps the highest "ack N" it read, until stopped.
type acks struct {
	mu   sync.Mutex
	last int
	stop func()
	done chan struct{}
}

func (c *cluster) followAcks(pod string) *acks {
	c.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, kubectlPath(), "-n", c.ns, "logs", "-f", pod)
	out, err := cmd.StdoutPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	a := &acks{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		s := bufio.NewScanner(out)
		for s.Scan() {
			if n, err := strconv.Atoi(strings.TrimPrefix(s.Text(), "ack ")); err == nil && strings.HasPrefix(s.Text(), "ack ") {
				a.mu.Lock()
				a.last = max(a.last, n)
				a.mu.Unlock()
			}
		}
		_ = cmd.Wait()
	}()
	c.t.Cleanup(func() { cancel(); <-a.done })
	return a
}

func (a *acks) max() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}

// movePhase is the phase of the VolumeMove of claim ("" while there is none).
func (c *cluster) movePhase(claim string) string {
	out, _ := c.try("get", "volumemove", claim, "-o", "jsonpath={.status.phase}")
	return out
}

// killPluginOn deletes the node plugin's pod on node (its DaemonSet starts another).
func (c *cluster) killPluginOn(node string) {
	c.t.Helper()
	c.kubectlNS(driverNS, "delete", "pod", "-l", "app.kubernetes.io/component=node",
		"--field-selector=spec.nodeName="+node, "--wait=false", "--grace-period=1")
}

// A StatefulSet's claim is moved to another node by kubectl berth move while its pod
// writes, and with each side's plugin and the mover killed once along the way: the
// claim keeps its name and comes back bound on the target node, the pod comes back
// there, every write acknowledged before the switch is in the volume, the data is
// unchanged, and the old volume is gone from the source node.
func TestMove(t *testing.T) {
	c := setup(t, alone)
	nodes := c.needNodes(3)
	from, to := nodes[1], nodes[2]
	bin := buildKubectlBerth(t)
	mib := envOr("BERTH_E2E_MOVE_MIB", "256")

	c.apply(claimOnNode("data-web-0", from, "1Gi") + "---\n" + statefulWriter("web", mib))
	c.waitFor("web-0 writing", 5*time.Minute, func() bool {
		out, _ := c.try("logs", "web-0")
		return strings.Contains(out, "ack 20")
	})
	if got := c.jsonpath("pod/web-0", "{.spec.nodeName}"); got != from {
		t.Fatalf("web-0 runs on %s, not on %s where its claim is", got, from)
	}
	digest := strings.Fields(c.kubectl("exec", "web-0", "--", "sha256sum", "/data/big"))[0]
	oldPV := c.jsonpath("pvc/data-web-0", "{.spec.volumeName}")
	oldDir := c.hostPathOf("data-web-0", defaultPool)
	acked := c.followAcks("web-0")

	// Each side's plugin, and the mover, killed once while the move runs.
	killed := make(chan []string, 1)
	go func() {
		var what []string
		defer func() { killed <- what }()
		deadline := time.Now().Add(10 * time.Minute)
		for step := 0; step < 3 && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			p := c.movePhase("data-web-0")
			switch {
			case step == 0 && p == "Copying":
				c.killPluginOn(from)
				what, step = append(what, "source plugin in "+p), 1
			case step == 1 && (p == "Stopping" || p == "Switching"):
				c.kubectlNS(driverNS, "delete", "pod", "-l", "app.kubernetes.io/component=mover", "--wait=false", "--grace-period=1")
				what, step = append(what, "mover in "+p), 2
			case step == 2 && p == "Starting":
				c.killPluginOn(to)
				what, step = append(what, "target plugin in "+p), 3
			case p == "Succeeded" || p == "Failed":
				return
			}
		}
	}()

	start := time.Now()
	cmd := exec.Command(bin, "move", "-n", c.ns, "data-web-0", "--to", to, "--timeout", "20m")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	t.Logf("kubectl berth move (%s):\n%s\n%s", time.Since(start).Round(time.Second), out.String(), errOut.String())
	t.Logf("killed: %v", <-killed)
	if err != nil {
		t.Fatalf("kubectl berth move: %v", err)
	}
	if p := c.movePhase("data-web-0"); p != "Succeeded" {
		t.Fatalf("move phase %q", p)
	}
	downtime := c.jsonpath("volumemove/data-web-0", "{.status.downtimeSeconds}")
	t.Logf("downtime %s s", downtime)

	if got := c.nodeOf("data-web-0"); got != to {
		t.Errorf("the claim's PV is on node %s, not %s", got, to)
	}
	c.waitReady("web-0", 5*time.Minute)
	if got := c.jsonpath("pod/web-0", "{.spec.nodeName}"); got != to {
		t.Errorf("web-0 came back on %s, not %s", got, to)
	}
	if got := strings.Fields(c.kubectl("exec", "web-0", "--", "sha256sum", "/data/big"))[0]; got != digest {
		t.Errorf("/data/big: digest %s after the move, %s before", got, digest)
	}
	last := acked.max()
	// Every line from 1 to the last acknowledged one is in the log, in order; lines
	// after it are the new pod's.
	log := strings.Fields(c.kubectl("exec", "web-0", "--", "cat", "/data/log"))
	if len(log) < last {
		t.Fatalf("the log holds %d lines; %d were acknowledged before the move", len(log), last)
	}
	for i := 0; i < last; i++ {
		if log[i] != strconv.Itoa(i+1) {
			t.Fatalf("line %d of the log is %q: an acknowledged write was lost", i+1, log[i])
		}
	}
	t.Logf("%d writes acknowledged before the switch, all kept; %d lines now", last, len(log))

	c.waitFor("the old PV "+oldPV+" deleted", 3*time.Minute, func() bool {
		_, err := kubectlBare("get", "pv", oldPV)
		return err != nil && strings.Contains(err.Error(), "NotFound")
	})
	c.waitFor("the old volume gone from "+from, 2*time.Minute, func() bool {
		_, err := c.nodeRun(from, "test", "-e", oldDir)
		return err != nil
	})
}

// kubectl berth evacuate moves the claims of a node elsewhere: 10 claims of this
// test on one node (with data, no pods) end up bound on other nodes with their data
// (read back there by the mover's pod), and no volume of theirs is left on it.
//
// Parallel: with -n, evacuate moves this namespace's claims alone.
func TestEvacuate(t *testing.T) {
	c := setup(t, parallel)
	nodes := c.needNodes(3)
	node := nodes[1]
	bin := buildKubectlBerth(t)
	const n = 10
	var manifest, script strings.Builder
	for i := range n {
		fmt.Fprintf(&manifest, "%s---\n", claimOnNode(fmt.Sprintf("c%d", i), node, "32Mi"))
	}
	c.apply(manifest.String())
	// One pod writes into all ten.
	var vols, mounts strings.Builder
	for i := range n {
		fmt.Fprintf(&mounts, "    - {name: v%d, mountPath: /c%d}\n", i, i)
		fmt.Fprintf(&vols, "  - name: v%d\n    persistentVolumeClaim: {claimName: c%d}\n", i, i)
		fmt.Fprintf(&script, "echo claim-%d > /c%d/f && ", i, i)
	}
	script.WriteString("sync")
	c.apply(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: fill}
spec:
  restartPolicy: Never
  nodeSelector: {kubernetes.io/hostname: %s}
  containers:
  - name: main
    image: %s
    imagePullPolicy: IfNotPresent
    command: ["/bin/sh", "-c", %s]
    volumeMounts:
%s  volumes:
%s`, node, busybox, quote(script.String()), mounts.String(), vols.String()))
	c.waitPhase("fill", "Succeeded", 3*time.Minute)
	c.kubectl("delete", "pod", "fill", "--wait=true")

	start := time.Now()
	cmd := exec.Command(bin, "evacuate", node, "-n", c.ns, "--parallel", "10", "--timeout", "20m")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	t.Logf("kubectl berth evacuate %s (%s):\n%s\n%s", node, time.Since(start).Round(time.Second), out.String(), errOut.String())
	if err != nil {
		t.Fatalf("kubectl berth evacuate: %v", err)
	}
	// No PV of the namespace is left on the node: the moves deleted the sources
	// (read back on their new nodes first, as no pod used them).
	pvs := c.kubectlNS("", "get", "pv", "-o", `jsonpath={range .items[*]}{.spec.claimRef.namespace} {.metadata.name} {.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}{"\n"}{end}`)
	for _, line := range strings.Split(pvs, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == c.ns && f[2] == node {
			t.Errorf("PV %s of the namespace is still on node %s", f[1], node)
		}
	}
	for i := range n {
		claim := fmt.Sprintf("c%d", i)
		on := c.nodeOf(claim)
		if on == node || on == "" {
			t.Errorf("claim %s is still on %q", claim, on)
			continue
		}
		got, err := c.nodeRun(on, "cat", filepath.Join(c.hostPathOf(claim, defaultPool), "data", "f"))
		if err != nil || strings.TrimSpace(got) != "claim-"+strconv.Itoa(i) {
			t.Errorf("claim %s on %s: f holds %q (%v)", claim, on, got, err)
		}
	}
}
