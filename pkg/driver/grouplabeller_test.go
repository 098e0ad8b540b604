package driver_test

import (
	"context"
	"strings"
	"testing"

	"github.com/berth-csi/berth/pkg/driver"
)

// TestGroupLabellerRefusesBadFlags: csi-driver group-labeller fails, naming the
// problem, on an invalid flag, without a node, and outside a pod.
func TestGroupLabellerRefusesBadFlags(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	node := []string{"--node-name", "node-a"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--node-name is required"},
		{[]string{"--node-name", strings.Repeat("n", 64)}, "--node-name"},
		{[]string{"--node-name", "a/b"}, "--node-name"},
		{append([]string{"--driver-name", "-berth"}, node...), "--driver-name"},
		{append([]string{"--page-size", "0"}, node...), "--page-size"},
		{append([]string{"--logging-format", "xml"}, node...), "--logging-format"},
		{append([]string{"--frobnicate"}, node...), "frobnicate"},
		{append(node, "extra"), "unexpected"},
		{node, "in-cluster configuration"},
	} {
		err := driver.GroupLabeller(context.Background(), tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("group-labeller %q: %v, want an error naming %s", tc.args, err, tc.want)
		}
	}
}
