package server

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// intercept runs one call through UnaryInterceptor with the given logger.
func intercept(logger logr.Logger, method string, req any, handler grpc.UnaryHandler) (any, error) {
	ctx := klog.NewContext(context.Background(), logger)
	return UnaryInterceptor()(ctx, req, &grpc.UnaryServerInfo{FullMethod: method}, handler)
}

func TestUnaryInterceptorErrors(t *testing.T) {
	notFound := status.Error(codes.NotFound, "volume vol-1 not found")
	tests := []struct {
		name     string
		handler  grpc.UnaryHandler
		wantCode codes.Code
		wantSame error // when set, the error must be passed through as is
		wantLog  string
	}{
		{
			name:     "success",
			handler:  func(context.Context, any) (any, error) { return &csi.CreateVolumeResponse{}, nil },
			wantCode: codes.OK,
		},
		{
			name:     "panic",
			handler:  func(context.Context, any) (any, error) { panic("boom") },
			wantCode: codes.Internal,
			wantLog:  "Panic in handler",
		},
		{
			name:     "nil panic",
			handler:  func(context.Context, any) (any, error) { panic(nil) },
			wantCode: codes.Internal,
			wantLog:  "Panic in handler",
		},
		{
			name:     "plain error",
			handler:  func(context.Context, any) (any, error) { return nil, fmt.Errorf("disk on fire") },
			wantCode: codes.Internal,
			wantLog:  "Non-status error returned: this is a bug",
		},
		{
			name:     "status error",
			handler:  func(context.Context, any) (any, error) { return nil, notFound },
			wantCode: codes.NotFound,
			wantSame: notFound,
			wantLog:  `"code"="NotFound"`,
		},
		{
			name: "wrapped status error",
			handler: func(context.Context, any) (any, error) {
				return nil, fmt.Errorf("delete: %w", notFound)
			},
			wantCode: codes.NotFound,
			wantLog:  `"code"="NotFound"`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var sink testutil.LogLines
			method := csi.Controller_CreateVolume_FullMethodName
			resp, err := intercept(sink.Logger(2), method, &csi.CreateVolumeRequest{Name: "pvc-1"}, tc.handler)
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("code = %v, want %v (err %v)", got, tc.wantCode, err)
			}
			if tc.wantSame != nil && !errors.Is(err, tc.wantSame) {
				t.Errorf("status error was not passed through: got %v", err)
			}
			if err != nil && resp != nil && !isNilResponse(resp) {
				t.Errorf("response %v returned with error", resp)
			}
			if tc.wantLog != "" && sink.Count(tc.wantLog) != 1 {
				t.Errorf("log lacks %q:\n%s", tc.wantLog, sink.String())
			}
		})
	}
}

func isNilResponse(v any) bool {
	r, ok := v.(*csi.CreateVolumeResponse)
	return ok && r == nil
}

func TestUnaryInterceptorPanicMessage(t *testing.T) {
	var sink testutil.LogLines
	method := csi.Node_NodePublishVolume_FullMethodName
	_, err := intercept(sink.Logger(0), method, &csi.NodePublishVolumeRequest{},
		func(context.Context, any) (any, error) { panic("boom") })
	if want := "internal error: panic in " + method; status.Convert(err).Message() != want {
		t.Errorf("message = %q, want %q", status.Convert(err).Message(), want)
	}
	if log := sink.String(); !strings.Contains(log, "boom") || !strings.Contains(log, "interceptor_test.go") {
		t.Errorf("panic value or stack missing from the log:\n%s", log)
	}
}

var requestIDRE = regexp.MustCompile(`"requestID"="([0-9a-f]+)"`)

func TestUnaryInterceptorContextLogger(t *testing.T) {
	var sink testutil.LogLines
	method := csi.Controller_DeleteVolume_FullMethodName
	handler := func(ctx context.Context, _ any) (any, error) {
		klog.FromContext(ctx).Info("Inside handler")
		return &csi.DeleteVolumeResponse{}, nil
	}
	for range 2 {
		if _, err := intercept(sink.Logger(0), method, &csi.DeleteVolumeRequest{VolumeId: "vol-1"}, handler); err != nil {
			t.Fatal(err)
		}
	}

	var ids []string
	for _, line := range sink.Lines() {
		if !strings.Contains(line, "Inside handler") {
			continue
		}
		if !strings.Contains(line, `"method"="`+method+`"`) {
			t.Errorf("handler log lacks the method: %s", line)
		}
		m := requestIDRE.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("handler log lacks a request ID: %s", line)
		}
		ids = append(ids, m[1])
	}
	if len(ids) != 2 || ids[0] == ids[1] {
		t.Errorf("request IDs = %v, want two distinct IDs", ids)
	}
}

func TestUnaryInterceptorLogsSanitisedRequests(t *testing.T) {
	var sink testutil.LogLines
	req := &csi.CreateVolumeRequest{Name: "pvc-1", Secrets: map[string]string{"password": "hunter2"}}
	_, err := intercept(sink.Logger(5), csi.Controller_CreateVolume_FullMethodName, req,
		func(context.Context, any) (any, error) {
			return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: "vol-1"}}, nil
		})
	if err != nil {
		t.Fatal(err)
	}
	log := sink.String()
	if strings.Contains(log, "hunter2") {
		t.Fatalf("secret reached the log:\n%s", log)
	}
	for _, want := range []string{`"msg"="Request"`, strippedValue, "pvc-1", `"msg"="Response"`, "vol-1"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s:\n%s", want, log)
		}
	}
}

func TestUnaryInterceptorFrequentCallsLogAtV6(t *testing.T) {
	ok := func(context.Context, any) (any, error) { return &csi.ProbeResponse{}, nil }
	tests := []struct {
		name      string
		method    string
		verbosity int
		wantLines int
	}{
		{name: "probe at V5", method: csi.Identity_Probe_FullMethodName, verbosity: 5, wantLines: 0},
		{name: "probe at V6", method: csi.Identity_Probe_FullMethodName, verbosity: 6, wantLines: 2},
		{name: "stats at V5", method: csi.Node_NodeGetVolumeStats_FullMethodName, verbosity: 5, wantLines: 0},
		{name: "capacity at V5", method: csi.Controller_GetCapacity_FullMethodName, verbosity: 5, wantLines: 0},
		{name: "capacity at V6", method: csi.Controller_GetCapacity_FullMethodName, verbosity: 6, wantLines: 2},
		{name: "plugin info at V5", method: csi.Identity_GetPluginInfo_FullMethodName, verbosity: 5, wantLines: 2},
		{name: "plugin info at V4", method: csi.Identity_GetPluginInfo_FullMethodName, verbosity: 4, wantLines: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var sink testutil.LogLines
			if _, err := intercept(sink.Logger(tc.verbosity), tc.method, &csi.ProbeRequest{}, ok); err != nil {
				t.Fatal(err)
			}
			if got := len(sink.Lines()); got != tc.wantLines {
				t.Errorf("%d log lines, want %d:\n%s", got, tc.wantLines, sink.String())
			}
		})
	}
}
