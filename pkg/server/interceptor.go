package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"k8s.io/klog/v2"
)

const (
	// requestLogLevel is the verbosity of sanitised requests and responses.
	requestLogLevel = 5
	// frequentLogLevel replaces requestLogLevel for calls made every few seconds.
	frequentLogLevel = 6
	// errorLogLevel is the verbosity of status errors returned by handlers.
	errorLogLevel = 2
)

// frequentMethods are polled by the kubelet and the sidecars; logging them at
// requestLogLevel would drown everything else.
var frequentMethods = map[string]bool{
	csi.Identity_Probe_FullMethodName:          true,
	csi.Node_NodeGetVolumeStats_FullMethodName: true,
	csi.Controller_GetCapacity_FullMethodName:  true,
}

// Observer is told each call's method, final gRPC code and duration (metrics).
type Observer func(fullMethod string, code codes.Code, d time.Duration)

// Hooks connect the interceptor to the rest of the driver; both may be nil.
type Hooks struct {
	Observe Observer
	Volumes Volumes // what the log keys need from the engine (logkeys.go)
}

// UnaryInterceptor returns the interceptor every Berth call passes through. In order:
// it gives the call a request ID and puts a logger carrying the method, that ID and
// the call's volume, snapshot and claim (logKeys) into the context; logs the
// sanitised request; runs the handler, turning a panic into codes.Internal; turns an
// error that is not a gRPC status into codes.Internal and logs it as a bug; logs the
// status code or the sanitised response; and tells hooks.Observe the code and time.
func UnaryInterceptor(hooks ...Hooks) grpc.UnaryServerInterceptor {
	var h Hooks
	if len(hooks) > 0 {
		h = hooks[0]
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		if h.Observe != nil {
			start := time.Now()
			defer func() { h.Observe(info.FullMethod, status.Code(err), time.Since(start)) }()
		}
		logger := klog.FromContext(ctx).WithValues(append([]any{"method", info.FullMethod, "requestID", newRequestID()},
			logKeys(req, h.Volumes)...)...)
		ctx = klog.NewContext(ctx, logger)

		level := requestLogLevel
		if frequentMethods[info.FullMethod] {
			level = frequentLogLevel
		}
		if v := logger.V(level); v.Enabled() {
			v.Info("Request", "request", sanitizeAny(req))
		}

		resp, err = callHandler(ctx, req, info, handler, logger)
		if err != nil {
			st, ok := status.FromError(err)
			if !ok {
				logger.Error(err, "Non-status error returned: this is a bug")
				return nil, status.Error(codes.Internal, err.Error())
			}
			logger.V(errorLogLevel).Info("Request failed", "code", st.Code().String(), "message", st.Message())
			return resp, err
		}
		if v := logger.V(level); v.Enabled() {
			v.Info("Response", "response", sanitizeAny(resp))
		}
		return resp, nil
	}
}

// callHandler runs handler and converts a panic into codes.Internal.
func callHandler(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler,
	logger logr.Logger) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			logger.Error(fmt.Errorf("panic: %v", r), "Panic in handler", "stack", string(debug.Stack()))
			resp = nil
			err = status.Errorf(codes.Internal, "internal error: panic in %s", info.FullMethod)
		}
	}()
	return handler(ctx, req)
}

// newRequestID returns 12 random hex digits: short enough to read, and with
// 2^48 values, unique enough to follow one call through the logs.
func newRequestID() string {
	var b [6]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (it crashes the program instead)
	return hex.EncodeToString(b[:])
}

// sanitizeAny renders a request or response for the logs without its secrets.
func sanitizeAny(v any) string {
	if m, ok := v.(proto.Message); ok {
		return Sanitize(m)
	}
	if v == nil {
		return "null"
	}
	return fmt.Sprintf("<%T>", v)
}
