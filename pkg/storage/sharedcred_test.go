package storage_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/berth-csi/berth/pkg/healthz"
	"github.com/berth-csi/berth/pkg/storage"
)

// TestMountErrorsHideCredentials: when a shared pool's mount fails and mount(8) or
// its helper prints a credential (an option echoed back, a key read from a
// secretfile), the credential shows in no error, no /readyz body and no
// VolumeCondition message; the option's name does, masked.
func TestMountErrorsHideCredentials(t *testing.T) {
	o := startOutage(t, true, 0)
	vol := mustCreate(t, o.shared, "pvc-1", mib)
	out := "mount error: option secret=" + credential + " rejected (password=" + credential + ")"
	o.refuseOutput.Store(&out)
	o.refuse.Store(true)
	o.kill(t)

	opErr := o.e.DeleteVolume(quiet(), vol.ID)
	if !errors.Is(opErr, storage.ErrNotReady) {
		t.Fatalf("DeleteVolume with the mount failing: %v, want ErrNotReady", opErr)
	}
	mountErr := o.shared.EnsureMounted(context.Background())
	if mountErr == nil {
		t.Fatal("mount did not fail")
	}
	rec := httptest.NewRecorder()
	healthz.Routes(nil, []healthz.Check{o.e.UnservedPools}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz answered %d with the pool unserved", rec.Code)
	}
	var conditions []string
	for _, p := range o.shared.Condition(vol.Hash()) {
		conditions = append(conditions, p.Message)
	}
	for what, text := range map[string]string{
		"the operation's error": opErr.Error(), "the mount error": mountErr.Error(),
		"/readyz": rec.Body.String(), "VolumeCondition": strings.Join(conditions, "; "),
	} {
		if strings.Contains(text, credential) {
			t.Errorf("%s shows the credential: %s", what, text)
		}
	}
	if !strings.Contains(mountErr.Error(), "secret=<masked>") {
		t.Errorf("the mount error %q does not say which option was masked", mountErr)
	}
}

// TestExecCommandHidesCredentials: the error of a failed command carries its command
// line and output with every credential masked.
func TestExecCommandHidesCredentials(t *testing.T) {
	_, err := storage.ExecCommand(context.Background(), "false", "-t", "ceph", "-o", "nosuid,name=berth,secret="+credential, "m:/", "/mnt")
	if err == nil {
		t.Fatal("false succeeded")
	}
	if strings.Contains(err.Error(), credential) || !strings.Contains(err.Error(), "secret=<masked>") {
		t.Errorf("error %q, want the secret masked", err)
	}
}
