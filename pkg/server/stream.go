package server

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// StreamInterceptor is UnaryInterceptor for server-streaming calls (the
// SnapshotMetadata service): a request ID and a logger in the stream's context,
// carrying the request's log keys once it is read; the sanitised request logged;
// a panic turned into codes.Internal; a non-status error into codes.Internal,
// logged as a bug; the final code logged and told to hooks.Observe. The messages
// sent are counted, not logged.
func StreamInterceptor(hooks ...Hooks) grpc.StreamServerInterceptor {
	var h Hooks
	if len(hooks) > 0 {
		h = hooks[0]
	}
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		if h.Observe != nil {
			start := time.Now()
			defer func() { h.Observe(info.FullMethod, status.Code(err), time.Since(start)) }()
		}
		logger := klog.FromContext(ss.Context()).WithValues("method", info.FullMethod, "requestID", newRequestID())
		ls := &loggedStream{ServerStream: ss, logger: logger, ctx: klog.NewContext(ss.Context(), logger), vols: h.Volumes}
		err = callStreamHandler(srv, ls, info, handler)
		if err != nil {
			st, ok := status.FromError(err)
			if !ok {
				ls.logger.Error(err, "Non-status error returned: this is a bug")
				return status.Error(codes.Internal, err.Error())
			}
			ls.logger.V(errorLogLevel).Info("Request failed", "code", st.Code().String(), "message", st.Message(), "messagesSent", ls.sent)
			return err
		}
		ls.logger.V(requestLogLevel).Info("Response streamed", "messagesSent", ls.sent)
		return nil
	}
}

// loggedStream gives the handler the interceptor's context, and adds the request's
// log keys to it once the request is read.
type loggedStream struct {
	grpc.ServerStream
	logger logr.Logger
	ctx    context.Context
	vols   Volumes
	read   bool
	sent   int
}

func (s *loggedStream) Context() context.Context { return s.ctx }

func (s *loggedStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil && !s.read {
		s.read = true
		s.logger = s.logger.WithValues(logKeys(m, s.vols)...)
		s.ctx = klog.NewContext(s.ctx, s.logger)
		if v := s.logger.V(requestLogLevel); v.Enabled() {
			v.Info("Request", "request", sanitizeAny(m))
		}
	}
	return err
}

func (s *loggedStream) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	if err == nil {
		s.sent++
	}
	return err
}

// callStreamHandler runs handler and converts a panic into codes.Internal.
func callStreamHandler(srv any, ls *loggedStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			ls.logger.Error(fmt.Errorf("panic: %v", r), "Panic in handler", "stack", string(debug.Stack()))
			err = status.Errorf(codes.Internal, "internal error: panic in %s", info.FullMethod)
		}
	}()
	return handler(srv, ls)
}
