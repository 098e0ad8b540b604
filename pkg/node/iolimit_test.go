package node_test

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/iothrottle"
)

// TestPublishIOLimitsCodes: a volume with per-pod I/O limits published for a pod
// whose cgroup cannot be found (a UID no pod of this machine has) is
// FailedPrecondition, its mount kept for the retry and removed by the unpublish; at
// a target that is no pod's (no UID in it) it is published without limits.
func TestPublishIOLimitsCodes(t *testing.T) {
	f := newFixture(t)
	if _, err := iothrottle.DeviceOf(f.base); err != nil {
		t.Skipf("the test's directory lies on no block device: %v", err)
	}
	r, err := f.pool.Create(context.Background(), storage.CreateRequest{
		Name: "pvc-io", RequiredBytes: 64 << 20, AccessType: storage.AccessMount,
		MutableParameters: map[string]string{storage.ParamReadIOPS: "100"},
	})
	if err != nil {
		t.Fatal(err)
	}
	noPod := f.target(t, "6f5e4d3c-2b1a-4098-8f7e-6d5c4b3a2910")
	_, err = f.srv.NodePublishVolume(context.Background(), publishReq(r.ID, noPod, rwo, false))
	wantCode(t, err, codes.FailedPrecondition)
	if len(f.engine.Publications(r.ID)) != 1 {
		t.Fatalf("publications %v, want the refused publish's mount kept", f.engine.Publications(r.ID))
	}
	if err := f.unpublish(r.ID, noPod); err != nil {
		t.Fatal(err)
	}
	notAPod := f.target(t, "not-a-pod")
	f.publish(t, r.ID, notAPod, rwo, false)
	if err := f.unpublish(r.ID, notAPod); err != nil {
		t.Fatal(err)
	}
}
