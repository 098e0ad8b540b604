package server

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// testWait bounds every wait in these tests; it is a deadlock guard, not a timing assertion.
const testWait = 30 * time.Second

type fakeIdentity struct {
	csi.UnimplementedIdentityServer
	// probe, when set, replaces the default Probe.
	probe func(ctx context.Context) (*csi.ProbeResponse, error)
}

func (f *fakeIdentity) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: "berth.csi.example.com", VendorVersion: "test"}, nil
}

func (f *fakeIdentity) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{}, nil
}

func (f *fakeIdentity) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if f.probe != nil {
		return f.probe(ctx)
	}
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// startServer serves s on a fresh socket and returns the socket path, a client
// connection, the cancel function and the channel Serve's result arrives on.
func startServer(t *testing.T, s *Server) (string, *grpc.ClientConn, context.CancelFunc, <-chan error) {
	t.Helper()
	path := filepath.Join(socketDir(t), "csi.sock")
	lis, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, lis) }()

	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return path, conn, cancel, served
}

func waitServed(t *testing.T, served <-chan error) error {
	t.Helper()
	select {
	case err := <-served:
		return err
	case <-time.After(testWait):
		t.Fatal("Serve did not return after its context was cancelled")
		return nil
	}
}

func TestServeEndToEnd(t *testing.T) {
	path, conn, cancel, served := startServer(t, New(&fakeIdentity{}, nil, nil))
	ctx, done := context.WithTimeout(context.Background(), testWait)
	defer done()

	info, err := csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil {
		t.Fatalf("GetPluginInfo: %v", err)
	}
	if info.GetName() != "berth.csi.example.com" {
		t.Errorf("plugin name = %q", info.GetName())
	}
	probe, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
	if err != nil || !probe.GetReady().GetValue() {
		t.Errorf("Probe = %v, %v; want ready", probe, err)
	}

	// Services passed as nil are not registered.
	_, err = csi.NewControllerClient(conn).ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("controller call: code %v, want Unimplemented", status.Code(err))
	}
	_, err = csi.NewNodeClient(conn).NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("node call: code %v, want Unimplemented", status.Code(err))
	}

	cancel()
	if err := waitServed(t, served); err != nil {
		t.Fatalf("Serve returned %v, want nil", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left behind after stop: %v", err)
	}
}

func TestServeCutsOffCallsAfterStopTimeout(t *testing.T) {
	entered := make(chan struct{})
	id := &fakeIdentity{probe: func(ctx context.Context) (*csi.ProbeResponse, error) {
		close(entered)
		<-ctx.Done() // only Stop ends this call
		return nil, status.FromContextError(ctx.Err()).Err()
	}}
	s := New(id, nil, nil)
	s.stopTimeout = 50 * time.Millisecond
	_, conn, cancel, served := startServer(t, s)

	ctx, done := context.WithTimeout(context.Background(), testWait)
	defer done()
	callErr := make(chan error, 1)
	go func() {
		_, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
		callErr <- err
	}()
	select {
	case <-entered:
	case <-time.After(testWait):
		t.Fatal("Probe never reached the handler")
	}

	cancel()
	if err := waitServed(t, served); err != nil {
		t.Fatalf("Serve returned %v, want nil", err)
	}
	if err := <-callErr; err == nil {
		t.Error("the cut-off call succeeded")
	}
}

func TestServeWithCancelledContext(t *testing.T) {
	lis, err := Listen(filepath.Join(socketDir(t), "csi.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := New(&fakeIdentity{}, nil, nil).Serve(ctx, lis); err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
}

func TestServeRequiresIdentity(t *testing.T) {
	lis, err := Listen(filepath.Join(socketDir(t), "csi.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if err := New(nil, nil, nil).Serve(context.Background(), lis); err == nil {
		t.Error("Serve without an identity server succeeded")
	}
}
