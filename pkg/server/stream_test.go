package server

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// fakeMetadata streams two messages for any snapshot; "bug" returns a plain error,
// "panic" panics.
type fakeMetadata struct {
	csi.UnimplementedSnapshotMetadataServer
	logged atomic.Bool // the handler's context carried a logger
}

func (f *fakeMetadata) GetMetadataAllocated(req *csi.GetMetadataAllocatedRequest, stream csi.SnapshotMetadata_GetMetadataAllocatedServer) error {
	if _, err := logr.FromContext(stream.Context()); err == nil {
		f.logged.Store(true)
	}
	switch req.GetSnapshotId() {
	case "bug":
		return errors.New("plain error")
	case "panic":
		panic("boom")
	}
	for i := range 2 {
		if err := stream.Send(&csi.GetMetadataAllocatedResponse{VolumeCapacityBytes: int64(i)}); err != nil {
			return err
		}
	}
	return nil
}

// TestStreamingService: the SnapshotMetadata service is served on the socket once
// set; its streams pass the readiness gate and the interceptor (a plain error and
// a panic become Internal) and are observed.
func TestStreamingService(t *testing.T) {
	var ready atomic.Bool
	var observed atomic.Int32
	m := &fakeMetadata{}
	s := New(&fakeIdentity{}, nil, nil)
	s.SetSnapshotMetadata(m)
	s.GateUntil(ready.Load)
	s.SetHooks(Hooks{Observe: func(method string, _ codes.Code, _ time.Duration) {
		if method == csi.SnapshotMetadata_GetMetadataAllocated_FullMethodName {
			observed.Add(1)
		}
	}})
	_, conn, _, _ := startServer(t, s)
	ctx, done := context.WithTimeout(context.Background(), testWait)
	defer done()
	client := csi.NewSnapshotMetadataClient(conn)
	recvAll := func(id string) (int, error) {
		st, err := client.GetMetadataAllocated(ctx, &csi.GetMetadataAllocatedRequest{SnapshotId: id})
		if err != nil {
			return 0, err
		}
		n := 0
		for {
			_, err := st.Recv()
			if err == io.EOF {
				return n, nil
			}
			if err != nil {
				return n, err
			}
			n++
		}
	}
	if _, err := recvAll("s"); status.Code(err) != codes.Unavailable {
		t.Errorf("before ready: code %v, want Unavailable", status.Code(err))
	}
	ready.Store(true)
	if n, err := recvAll("s"); err != nil || n != 2 {
		t.Errorf("got %d messages, %v; want 2, nil", n, err)
	}
	if !m.logged.Load() {
		t.Error("the handler's context had no logger")
	}
	for _, id := range []string{"bug", "panic"} {
		if _, err := recvAll(id); status.Code(err) != codes.Internal {
			t.Errorf("%s: code %v, want Internal", id, status.Code(err))
		}
	}
	if got := observed.Load(); got != 4 {
		t.Errorf("observed %d calls, want 4", got)
	}
	st, err := client.GetMetadataDelta(ctx, &csi.GetMetadataDeltaRequest{})
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("GetMetadataDelta of a server without it: code %v, want Unimplemented", status.Code(err))
	}
}

// recvStream is a server stream whose one request is req, read by RecvMsg.
type recvStream struct {
	grpc.ServerStream
	ctx context.Context
	req proto.Message
}

func (s *recvStream) Context() context.Context { return s.ctx }

func (s *recvStream) RecvMsg(m any) error {
	proto.Merge(m.(proto.Message), s.req)
	return nil
}

// TestStreamInterceptorLogsSanitisedRequests: the request a stream reads is logged
// without its secrets, and its snapshot IDs become keys of every line logged under
// the call.
func TestStreamInterceptorLogsSanitisedRequests(t *testing.T) {
	var sink testutil.LogLines
	req := &csi.GetMetadataDeltaRequest{BaseSnapshotId: "s1-a", TargetSnapshotId: "s1-b", Secrets: map[string]string{"password": "hunter2"}}
	ss := &recvStream{ctx: logr.NewContext(context.Background(), sink.Logger(5)), req: req}
	info := &grpc.StreamServerInfo{FullMethod: csi.SnapshotMetadata_GetMetadataDelta_FullMethodName, IsServerStream: true}
	err := StreamInterceptor()(nil, ss, info, func(_ any, stream grpc.ServerStream) error {
		if err := stream.RecvMsg(&csi.GetMetadataDeltaRequest{}); err != nil {
			return err
		}
		logr.FromContextOrDiscard(stream.Context()).Info("Handler ran")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	log := sink.String()
	if strings.Contains(log, "hunter2") {
		t.Fatalf("secret reached the log:\n%s", log)
	}
	for _, want := range []string{`"msg"="Request"`, strippedValue, `"msg"="Handler ran"`, `"targetSnapshotID"="s1-b"`, `"msg"="Response streamed"`} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s:\n%s", want, log)
		}
	}
}
