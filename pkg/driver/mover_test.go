package driver_test

import (
	"context"
	"strings"
	"testing"

	"github.com/berth-csi/berth/pkg/driver"
)

// TestMoverRefusesBadFlags: csi-driver mover fails, naming the problem, on an
// invalid flag and outside a pod.
func TestMoverRefusesBadFlags(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--driver-name", "-berth"}, "--driver-name"},
		{[]string{"--workers", "0"}, "--workers"},
		{[]string{"--resync-interval", "1s"}, "--resync-interval"},
		{[]string{"--logging-format", "xml"}, "--logging-format"},
		{[]string{"--frobnicate"}, "frobnicate"},
		{[]string{"extra"}, "unexpected"},
		{nil, "in-cluster configuration"},
	} {
		err := driver.Mover(context.Background(), tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("mover %q: %v, want an error naming %s", tc.args, err, tc.want)
		}
	}
}
