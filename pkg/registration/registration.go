// Package registration registers the node service with the kubelet through the plugin
// registration API (k8s.io/kubelet/pkg/apis/pluginregistration/v1), doing the job of
// the node-driver-registrar sidecar: a socket in <kubelet-dir>/plugins_registry that the
// kubelet's plugin watcher finds, asks for the driver's name and CSI endpoint, and
// answers with the registration's outcome.
package registration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/berth-csi/berth/pkg/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// RegistryDir is the kubelet's plugin watcher directory under its root.
func RegistryDir(kubeletDir string) string { return filepath.Join(kubeletDir, "plugins_registry") }

// SocketPath is where the registration socket for driverName lives in registryDir.
func SocketPath(registryDir, driverName string) string {
	return filepath.Join(registryDir, driverName+"-reg.sock")
}

// supportedVersions are the CSI versions offered to the kubelet.
var supportedVersions = []string{"1.0.0"}

// Registrar serves the registration API for one CSI driver.
type Registrar struct {
	registerapi.UnimplementedRegistrationServer
	driverName string
	endpoint   string // the CSI socket as the kubelet sees it
	socket     string

	mu         sync.Mutex
	registered bool
	rejected   error // the kubelet's refusal, if it refused
}

// New returns a registrar that will tell the kubelet that driverName serves CSI at
// endpoint (an absolute socket path in the kubelet's mount namespace) and serves the
// registration API at socket.
func New(driverName, endpoint, socket string) (*Registrar, error) {
	if !filepath.IsAbs(endpoint) {
		return nil, fmt.Errorf("registration endpoint %q: must be an absolute socket path", endpoint)
	}
	return &Registrar{driverName: driverName, endpoint: filepath.Clean(endpoint), socket: socket}, nil
}

// GetInfo answers the kubelet's first question: who is this plugin and where is it served.
func (r *Registrar) GetInfo(ctx context.Context, _ *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	klog.FromContext(ctx).V(4).Info("Kubelet asked for plugin info", "driverName", r.driverName, "endpoint", r.endpoint)
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.driverName,
		Endpoint:          r.endpoint,
		SupportedVersions: supportedVersions,
	}, nil
}

// NotifyRegistrationStatus records the kubelet's verdict. A refusal makes Healthy fail,
// so the liveness probe restarts the container and the registration is tried again.
func (r *Registrar) NotifyRegistrationStatus(ctx context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	logger := klog.FromContext(ctx)
	if st == nil {
		return nil, status.Error(codes.InvalidArgument, "registration status is required")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if st.PluginRegistered {
		r.registered, r.rejected = true, nil
		logger.Info("Registered with the kubelet", "driverName", r.driverName, "endpoint", r.endpoint)
	} else {
		r.registered = false
		r.rejected = fmt.Errorf("kubelet refused the registration: %s", st.Error)
		logger.Error(r.rejected, "Registration failed", "driverName", r.driverName)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// Registered reports whether the kubelet has accepted the plugin.
func (r *Registrar) Registered() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.registered
}

// Healthy is nil unless the kubelet refused the registration or the registration socket
// has gone (the kubelet would then consider the plugin removed).
func (r *Registrar) Healthy() error {
	r.mu.Lock()
	rejected := r.rejected
	r.mu.Unlock()
	if rejected != nil {
		return rejected
	}
	fi, err := os.Lstat(r.socket)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("registration socket %s is gone", r.socket)
	case err != nil:
		return fmt.Errorf("registration socket: %w", err)
	case fi.Mode().Type() != os.ModeSocket:
		return fmt.Errorf("registration socket %s is not a socket", r.socket)
	}
	return nil
}

// Run creates the registration socket (replacing a stale one; a live one is an error)
// and serves the kubelet until ctx ends. The socket is removed on return, which
// tells the kubelet the plugin is gone; volumes already mounted stay mounted.
func (r *Registrar) Run(ctx context.Context) error {
	lis, err := server.Listen(r.socket)
	if err != nil {
		return fmt.Errorf("registration socket: %w", err)
	}
	s := grpc.NewServer()
	registerapi.RegisterRegistrationServer(s, r)
	klog.FromContext(ctx).Info("Serving kubelet plugin registration", "socket", r.socket)
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		s.GracefulStop()
	}()
	err = s.Serve(lis)
	<-done
	if errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	return err
}
