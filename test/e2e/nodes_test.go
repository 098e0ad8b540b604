package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// nodes lists the cluster's nodes by name, thisNode first, the others sorted.
func (c *cluster) nodes() []string {
	c.t.Helper()
	names := strings.Fields(c.kubectlNS("", "get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"))
	slices.SortFunc(names, func(a, b string) int {
		switch {
		case a == thisNode:
			return -1
		case b == thisNode:
			return 1
		}
		return strings.Compare(a, b)
	})
	return names
}

// needNodes skips the test unless the cluster has at least n nodes (hack/cluster-up.sh
// makes NODES of them, 3 by default).
func (c *cluster) needNodes(n int) []string {
	c.t.Helper()
	nodes := c.nodes()
	if len(nodes) < n {
		c.t.Skipf("needs %d nodes, the cluster has %d (%v): bring it up with NODES=%d hack/cluster-up.sh", n, len(nodes), nodes, n)
	}
	return nodes
}

// nodeCmd is a command run on node: on this machine for thisNode, else inside the
// node's mount, network, UTS and PID namespaces (those of its init, whose PID
// hack/cluster-up.sh keeps in $BERTH_CLUSTER_DIR/run/node-<name>.pid).
func (c *cluster) nodeCmd(node string, args ...string) *exec.Cmd {
	c.t.Helper()
	if node == thisNode {
		return exec.Command(args[0], args[1:]...)
	}
	init := c.nodeInit(node)
	return exec.Command("nsenter", append([]string{"--target", strconv.Itoa(init), "--mount", "--net", "--uts", "--pid", "--"}, args...)...)
}

// nodeRun runs args on node and returns its standard output, or an error with its
// standard error.
func (c *cluster) nodeRun(node string, args ...string) (string, error) {
	c.t.Helper()
	cmd := c.nodeCmd(node, args...)
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), fmt.Errorf("on %s: %s: %v: %s", node, strings.Join(args, " "), err, ee.Stderr)
	}
	return string(out), err
}

// nodeInit is the PID (here) of a further node's init.
func (c *cluster) nodeInit(node string) int {
	c.t.Helper()
	f := filepath.Join(envOr("BERTH_CLUSTER_DIR", "/var/lib/berth-cluster"), "run", "node-"+node+".pid")
	b, err := os.ReadFile(f)
	if err != nil {
		c.t.Fatalf("node %s: %v (is it a node of hack/cluster-up.sh?)", node, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		c.t.Fatalf("node %s: %s: %v", node, f, err)
	}
	return pid
}

// kubeletPID is the PID (here) of node's kubelet: the process whose command line names
// the node with --hostname-override.
func (c *cluster) kubeletPID(node string) int {
	c.t.Helper()
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if filepath.Base(args[0]) != "kubelet" {
			continue
		}
		if i := slices.Index(args, "--hostname-override"); i >= 0 && i+1 < len(args) && args[i+1] == node {
			pid, _ := strconv.Atoi(filepath.Base(d))
			return pid
		}
	}
	c.t.Fatalf("no kubelet process for node %s", node)
	return 0
}

// nodeOf is the node a claim's volume lives on, from its PV's node affinity ("" for a
// volume without one: a shared pool's).
func (c *cluster) nodeOf(claim string) string {
	c.t.Helper()
	pv := c.jsonpath("pvc/"+claim, "{.spec.volumeName}")
	return c.kubectlNS("", "get", "pv", pv, "-o",
		"jsonpath={.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[?(@.key==\"topology.berth.csi.io/node\")].values[0]}")
}
