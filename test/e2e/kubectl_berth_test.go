package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestKubectlBerth builds bin/kubectl-berth and runs it against the cluster: pools and
// volumes show a claim the test writes to, and doctor finds an orphan (the data of a
// Retain volume whose claim and PV were deleted) and `doctor --fix --yes` moves it
// to the pool's trash, leaving the claim that a PV still names alone.
func TestKubectlBerth(t *testing.T) {
	c := setup(t, alone)
	bin := filepath.Join(t.TempDir(), "kubectl-berth")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/kubectl-berth").CombinedOutput(); err != nil {
		t.Fatalf("build kubectl-berth: %v\n%s", err, out)
	}
	plugin := func(args ...string) (stdout, stderr string, code int) {
		t.Helper()
		cmd := exec.Command(bin, append(args, "--driver-namespace", driverNS)...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		var exit *exec.ExitError
		switch {
		case errors.As(err, &exit):
			code = exit.ExitCode()
		case err != nil:
			t.Fatalf("kubectl-berth %v: %v", args, err)
		}
		if code == 2 {
			t.Fatalf("kubectl-berth %v failed: %s", args, errOut.String())
		}
		return out.String(), errOut.String(), code
	}

	c.apply(pvc("data", "berth", "64Mi", "Filesystem"))
	c.apply(podOn("w", "data", "echo hi > /data/f && sync", "Never"))
	c.waitPhase("w", "Succeeded", 2*time.Minute)

	out, _, _ := plugin("pools")
	if !strings.Contains(out, "default") || !strings.Contains(out, "served") {
		t.Errorf("pools:\n%s", out)
	}
	out, _, _ = plugin("pools", "-o", "json")
	var pools struct {
		Pools []struct {
			Pool          string `json:"pool"`
			Served        bool   `json:"served"`
			CapacityBytes int64  `json:"capacityBytes"`
		} `json:"pools"`
	}
	if err := json.Unmarshal([]byte(out), &pools); err != nil || len(pools.Pools) == 0 || !pools.Pools[0].Served || pools.Pools[0].CapacityBytes <= 0 {
		t.Errorf("pools -o json: %v\n%s", err, out)
	}

	out, _, _ = plugin("volumes", "-n", c.ns)
	if !strings.Contains(out, c.ns+"/data") || !strings.Contains(out, "Healthy") || !strings.Contains(out, "64 MiB") {
		t.Errorf("volumes -n %s:\n%s", c.ns, out)
	}
	out, _, _ = plugin("volumes", "-n", c.ns, "-o", "yaml")
	if !strings.Contains(out, "health: Healthy") || !strings.Contains(out, "claim: data") {
		t.Errorf("volumes -o yaml:\n%s", out)
	}

	// An orphan: a Retain volume whose claim, then PV, an admin deleted.
	c.apply(pvc("kept", "berth-retain", "64Mi", "Filesystem"))
	c.apply(podOn("k", "kept", "echo orphan > /data/f && sync", "Never"))
	c.waitPhase("k", "Succeeded", 2*time.Minute)
	dir := c.hostPathOf("kept", defaultPool)
	pv := c.jsonpath("pvc/kept", "{.spec.volumeName}")
	handle := c.kubectl("get", "pv", pv, "-o", "jsonpath={.spec.csi.volumeHandle}")
	c.kubectl("delete", "pod", "k", "--wait=true")
	c.kubectl("delete", "pvc", "kept", "--wait=true")
	c.waitFor("PV released", time.Minute, func() bool {
		out, _ := c.tryNS("", "get", "pv", pv, "-o", "jsonpath={.status.phase}")
		return out == "Released"
	})
	c.kubectlNS("", "delete", "pv", pv, "--wait=true")
	if _, err := os.Stat(filepath.Join(dir, "data", "f")); err != nil {
		t.Fatalf("the retained data is not on the host: %v", err)
	}

	out, _, code := plugin("doctor", "--interval=1s")
	if code != 1 || !strings.Contains(out, "Orphan") || !strings.Contains(out, handle) {
		t.Fatalf("doctor exit %d, want 1 with the orphan %s:\n%s", code, handle, out)
	}
	dataID := c.kubectl("get", "pv", c.jsonpath("pvc/data", "{.spec.volumeName}"), "-o", "jsonpath={.spec.csi.volumeHandle}")
	if strings.Contains(out, "Orphan: node") && strings.Contains(out, dataID) {
		t.Errorf("doctor reports the claimed volume %s:\n%s", dataID, out)
	}

	_, errOut, _ := plugin("doctor", "--interval=1s", "--fix", "--yes")
	if !strings.Contains(errOut, "Volume "+handle+" moved to the trash") {
		t.Errorf("doctor --fix --yes:\n%s", errOut)
	}
	if strings.Contains(errOut, dataID) {
		t.Errorf("doctor --fix touched %s, which a PV names:\n%s", dataID, errOut)
	}
	c.waitFor("orphan gone from the host", 2*time.Minute, func() bool {
		_, err := os.Stat(dir)
		return os.IsNotExist(err)
	})
	if _, err := os.Stat(c.hostPathOf("data", defaultPool)); err != nil {
		t.Errorf("the claimed volume's data: %v", err)
	}
	out, _, _ = plugin("doctor", "--interval=1s")
	if strings.Contains(out, handle) {
		t.Errorf("doctor still reports %s after --fix:\n%s", handle, out)
	}
}
