package server

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// identityPrefix starts the full method name of every Identity service call.
const identityPrefix = "/csi.v1.Identity/"

// GateUntil makes every call but the Identity service's answer Unavailable until
// ready reports true. Call it before Serve.
func (s *Server) GateUntil(ready func() bool) { s.ready = ready }

// readyGate answers Unavailable while the driver is not ready: before start-up
// reconciliation ends it does not know its volumes and mounts, and an answer then
// (a deletion, a "not published") could be a success that did nothing. The
// sidecars and the kubelet retry Unavailable.
func readyGate(ready func() bool) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if ready == nil || ready() || strings.HasPrefix(info.FullMethod, identityPrefix) {
			return handler(ctx, req)
		}
		return nil, errNotReady
	}
}

// readyGateStream is readyGate for the streaming calls (SnapshotMetadata).
func readyGateStream(ready func() bool) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if ready == nil || ready() || strings.HasPrefix(info.FullMethod, identityPrefix) {
			return handler(srv, ss)
		}
		return errNotReady
	}
}

var errNotReady = status.Error(codes.Unavailable, "start-up reconciliation is not finished: the driver does not know its volumes and mounts yet; retry")
