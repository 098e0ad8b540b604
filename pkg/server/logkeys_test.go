package server

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// fakeVolumes answers as an engine with one volume, b1-p-1, of claim ns/data.
type fakeVolumes struct{}

func (fakeVolumes) CreatedVolumeID(name string, params map[string]string) string {
	return "b1-" + params["pool"] + "-" + name
}

func (fakeVolumes) ClaimOf(id string) (string, string, bool) {
	if id == "b1-p-1" {
		return "ns", "data", true
	}
	return "", "", false
}

func TestLogKeys(t *testing.T) {
	tests := []struct {
		name string
		req  any
		want []any
	}{
		{"create names the volume it makes and the claim the provisioner passed",
			&csi.CreateVolumeRequest{Name: "2", Parameters: map[string]string{"pool": "p", ParamClaimNamespace: "ns2", ParamClaimName: "c2"}},
			[]any{"volumeID", "b1-p-2", "name", "2", "claimNamespace", "ns2", "claimName", "c2"}},
		{"create without the provisioner's metadata",
			&csi.CreateVolumeRequest{Name: "2", Parameters: map[string]string{"pool": "p"}},
			[]any{"volumeID", "b1-p-2", "name", "2"}},
		{"delete finds the recorded claim", &csi.DeleteVolumeRequest{VolumeId: "b1-p-1"},
			[]any{"volumeID", "b1-p-1", "claimNamespace", "ns", "claimName", "data"}},
		{"publish adds the pod", &csi.NodePublishVolumeRequest{VolumeId: "b1-p-1",
			VolumeContext: map[string]string{ctxPodNamespace: "ns", ctxPodName: "app"}},
			[]any{"volumeID", "b1-p-1", "claimNamespace", "ns", "claimName", "data", "podNamespace", "ns", "podName", "app"}},
		{"snapshot names its source volume", &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: "b1-p-1"},
			[]any{"volumeID", "b1-p-1", "snapshotName", "s", "claimNamespace", "ns", "claimName", "data"}},
		{"delete snapshot", &csi.DeleteSnapshotRequest{SnapshotId: "s1-p-s"}, []any{"snapshotID", "s1-p-s"}},
		{"probe has none", &csi.ProbeRequest{}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := logKeys(tc.req, fakeVolumes{}); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("logKeys = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestInterceptorLinesCarryVolume: the handler's own lines and the interceptor's
// carry the request ID, the volume ID and the claim; the observer hears the final code.
func TestInterceptorLinesCarryVolume(t *testing.T) {
	var sink testutil.LogLines
	var gotMethod string
	var gotCode codes.Code
	icpt := UnaryInterceptor(Hooks{Volumes: fakeVolumes{}, Observe: func(m string, c codes.Code, _ time.Duration) {
		gotMethod, gotCode = m, c
	}})
	ctx := klog.NewContext(context.Background(), sink.Logger(5))
	_, err := icpt(ctx, &csi.DeleteVolumeRequest{VolumeId: "b1-p-1"}, &grpc.UnaryServerInfo{FullMethod: csi.Controller_DeleteVolume_FullMethodName},
		func(ctx context.Context, _ any) (any, error) {
			klog.FromContext(ctx).V(2).Info("Volume deleted")
			return nil, status.Error(codes.Aborted, "busy")
		})
	if status.Code(err) != codes.Aborted {
		t.Fatalf("err = %v", err)
	}
	if gotMethod != csi.Controller_DeleteVolume_FullMethodName || gotCode != codes.Aborted {
		t.Errorf("observed %s %s, want DeleteVolume Aborted", gotMethod, gotCode)
	}
	lines := sink.Lines()
	if len(lines) < 3 {
		t.Fatalf("want request, handler and failure lines, got %q", lines)
	}
	for _, l := range lines {
		for _, want := range []string{`"requestID"`, `"volumeID"="b1-p-1"`, `"claimNamespace"="ns"`, `"claimName"="data"`} {
			if !strings.Contains(l, want) {
				t.Errorf("line %s lacks %s", l, want)
			}
		}
	}
}

// TestObserverSeesInternalForNonStatus: a bare error is counted as the Internal
// the caller receives.
func TestObserverSeesInternalForNonStatus(t *testing.T) {
	var gotCode codes.Code
	icpt := UnaryInterceptor(Hooks{Observe: func(_ string, c codes.Code, _ time.Duration) { gotCode = c }})
	var sink testutil.LogLines
	ctx := klog.NewContext(context.Background(), sink.Logger(0))
	_, _ = icpt(ctx, &csi.ProbeRequest{}, &grpc.UnaryServerInfo{FullMethod: csi.Identity_Probe_FullMethodName},
		func(context.Context, any) (any, error) { return nil, context.Canceled })
	if gotCode != codes.Internal {
		t.Errorf("observed %s, want Internal", gotCode)
	}
}
