package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"
)

// defaultStopTimeout bounds how long in-flight calls may run after the context
// ends before they are cut off.
const defaultStopTimeout = 10 * time.Second

// Server serves Berth's CSI services on one listener.
type Server struct {
	identity   csi.IdentityServer
	controller csi.ControllerServer
	group      csi.GroupControllerServer
	metadata   csi.SnapshotMetadataServer
	node       csi.NodeServer

	stopTimeout time.Duration
	ready       func() bool // nil: always ready (see GateUntil)
	hooks       Hooks
}

// New returns a Server for the given services. identity is required; controller
// or node may be nil, and a nil service is not registered (its calls then fail
// with codes.Unimplemented).
func New(identity csi.IdentityServer, controller csi.ControllerServer, node csi.NodeServer) *Server {
	return &Server{
		identity:    identity,
		controller:  controller,
		node:        node,
		stopTimeout: defaultStopTimeout,
	}
}

// SetGroupController adds the GroupController service (nil: not registered, its
// calls then fail with codes.Unimplemented); call it before Serve.
func (s *Server) SetGroupController(g csi.GroupControllerServer) { s.group = g }

// SetSnapshotMetadata adds the SnapshotMetadata service, server-streaming (nil: not
// registered, its calls then fail with codes.Unimplemented); call it before Serve.
func (s *Server) SetSnapshotMetadata(m csi.SnapshotMetadataServer) { s.metadata = m }

// SetHooks sets what the interceptor tells (metrics) and asks (log keys); call it
// before Serve.
func (s *Server) SetHooks(h Hooks) { s.hooks = h }

// Serve serves on lis until ctx is cancelled, then stops gracefully: in-flight
// calls get up to 10 seconds to finish before they are cut off. It returns nil on
// such a stop and an error if serving fails. lis is closed when Serve returns.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	logger := klog.FromContext(ctx)
	addr := lis.Addr().String()
	if s.identity == nil {
		_ = lis.Close()
		return errors.New("serve: identity server is required")
	}

	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(UnaryInterceptor(s.hooks), readyGate(s.ready)),
		grpc.ChainStreamInterceptor(StreamInterceptor(s.hooks), readyGateStream(s.ready)),
		// Calls run on long-lived workers, one per P, rather than on a new
		// goroutine each whose small stack every call grows and copies: 15-25 µs
		// of the 200 an empty call takes on the bench machine (docs/benchmarks.md).
		// When every worker is busy a call gets its own goroutine, as without
		// them, so concurrency is unchanged.
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
	)
	csi.RegisterIdentityServer(srv, s.identity)
	if s.controller != nil {
		csi.RegisterControllerServer(srv, s.controller)
	}
	if s.group != nil {
		csi.RegisterGroupControllerServer(srv, s.group)
	}
	if s.metadata != nil {
		csi.RegisterSnapshotMetadataServer(srv, s.metadata)
	}
	if s.node != nil {
		csi.RegisterNodeServer(srv, s.node)
	}

	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	logger.Info("Serving", "address", addr)

	select {
	case err := <-served:
		// Serve only returns on its own when accepting fails.
		srv.Stop()
		return fmt.Errorf("serve on %s: %w", addr, err)
	case <-ctx.Done():
	}

	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(s.stopTimeout)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		logger.Info("Graceful stop timed out, cancelling in-flight calls", "timeout", s.stopTimeout)
		srv.Stop()
		<-stopped
	}

	err := <-served
	logger.Info("Stopped", "address", addr)
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve on %s: %w", addr, err)
	}
	return nil
}
