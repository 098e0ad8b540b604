package controller_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/controller"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// fakeStream records what a server-streaming handler sends; sendErr fails every
// send (a client gone away).
type fakeStream[T any] struct {
	grpc.ServerStream
	sent    []*T
	sendErr error
}

func (s *fakeStream[T]) Context() context.Context { return context.Background() }

func (s *fakeStream[T]) Send(m *T) error {
	if s.sendErr != nil {
		return s.sendErr
	}
	s.sent = append(s.sent, m)
	return nil
}

type allocStream = fakeStream[csi.GetMetadataAllocatedResponse]
type deltaStream = fakeStream[csi.GetMetadataDeltaResponse]

// TestSnapshotMetadataValidation: requests refused before any disk work, on a dir
// pool whose snapshots are directories (FailedPrecondition: no block metadata).
func TestSnapshotMetadataValidation(t *testing.T) {
	f := newFixture(t)
	vol := f.mustCreate(t, "vol")
	snap, err := f.srv.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: vol.GetVolumeId()})
	wantCode(t, err, codes.OK)
	dirSnap := snap.GetSnapshot().GetSnapshotId()
	unknown := storage.SnapshotID("default", "nope")
	m := controller.NewMetadata(f.engine)
	for _, c := range []struct {
		name     string
		req      *csi.GetMetadataAllocatedRequest
		wantCode codes.Code
	}{
		{"no snapshot_id", &csi.GetMetadataAllocatedRequest{}, codes.InvalidArgument},
		{"hostile snapshot_id", &csi.GetMetadataAllocatedRequest{SnapshotId: "../../etc"}, codes.InvalidArgument},
		{"negative max_results", &csi.GetMetadataAllocatedRequest{SnapshotId: dirSnap, MaxResults: -1}, codes.InvalidArgument},
		{"unknown snapshot", &csi.GetMetadataAllocatedRequest{SnapshotId: unknown}, codes.NotFound},
		{"foreign snapshot", &csi.GetMetadataAllocatedRequest{SnapshotId: "snap-of-another-driver"}, codes.NotFound},
		{"snapshot of a directory volume", &csi.GetMetadataAllocatedRequest{SnapshotId: dirSnap}, codes.FailedPrecondition},
	} {
		t.Run("allocated "+c.name, func(t *testing.T) {
			wantCode(t, m.GetMetadataAllocated(c.req, &allocStream{}), c.wantCode)
		})
	}
	for _, c := range []struct {
		name     string
		req      *csi.GetMetadataDeltaRequest
		wantCode codes.Code
	}{
		{"no base", &csi.GetMetadataDeltaRequest{TargetSnapshotId: dirSnap}, codes.InvalidArgument},
		{"no target", &csi.GetMetadataDeltaRequest{BaseSnapshotId: dirSnap}, codes.InvalidArgument},
		{"negative max_results", &csi.GetMetadataDeltaRequest{BaseSnapshotId: dirSnap, TargetSnapshotId: dirSnap, MaxResults: -5}, codes.InvalidArgument},
		{"unknown base", &csi.GetMetadataDeltaRequest{BaseSnapshotId: unknown, TargetSnapshotId: dirSnap}, codes.NotFound},
		{"snapshots of a directory volume", &csi.GetMetadataDeltaRequest{BaseSnapshotId: dirSnap, TargetSnapshotId: dirSnap}, codes.FailedPrecondition},
	} {
		t.Run("delta "+c.name, func(t *testing.T) {
			wantCode(t, m.GetMetadataDelta(c.req, &deltaStream{}), c.wantCode)
		})
	}
}

// metadataSite is a controller on an image pool "default" on XFS with reflinks (as
// root), with a raw block volume whose image the test writes.
type metadataSite struct {
	*fixture
	meta  *controller.MetadataServer
	volID string
	image *os.File
}

func newMetadataSite(t *testing.T, size int64) *metadataSite {
	t.Helper()
	mnt := testutil.MountFS(t, testutil.XFSPlain, 1<<30)
	f := newFixture(t, storage.PoolConfig{Name: "default", Path: filepath.Join(mnt, "pool"), Kind: storage.KindImage})
	resp, err := f.srv.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: "vol", CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)},
	})
	wantCode(t, err, codes.OK)
	p, r, err := f.engine.Volume(resp.GetVolume().GetVolumeId())
	if err != nil {
		t.Fatal(err)
	}
	img, err := os.OpenFile(filepath.Join(p.VolumeDir(r.Hash()), storage.ImageFile), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return &metadataSite{fixture: f, meta: controller.NewMetadata(f.engine), volID: r.ID, image: img}
}

// writeBlocks writes a random 4 KiB block at each block number.
func (s *metadataSite) writeBlocks(t *testing.T, blocks ...int64) {
	t.Helper()
	buf := make([]byte, storage.BlockSize)
	for _, n := range blocks {
		_, _ = rand.Read(buf)
		if _, err := s.image.WriteAt(buf, n*storage.BlockSize); err != nil {
			t.Fatal(err)
		}
	}
}

func (s *metadataSite) snapshot(t *testing.T, name string) string {
	t.Helper()
	resp, err := s.srv.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: s.volID})
	wantCode(t, err, codes.OK)
	return resp.GetSnapshot().GetSnapshotId()
}

// TestSnapshotMetadataStreams: a delta of eight separate blocks arrives in messages
// of at most max_results ranges, VARIABLE_LENGTH, each with the volume's capacity,
// ranges ascending; an empty listing is one message without ranges; a start past
// the capacity is OutOfRange; snapshots of two volumes InvalidArgument; a failed
// send ends the stream with an error.
func TestSnapshotMetadataStreams(t *testing.T) {
	const size = 8 << 20
	s := newMetadataSite(t, size)
	s.writeBlocks(t, 0, 1)
	base := s.snapshot(t, "base")
	changed := []int64{3, 10, 20, 30, 40, 50, 60, 2047}
	s.writeBlocks(t, changed...)
	target := s.snapshot(t, "target")

	st := &deltaStream{}
	wantCode(t, s.meta.GetMetadataDelta(&csi.GetMetadataDeltaRequest{BaseSnapshotId: base, TargetSnapshotId: target, MaxResults: 3}, st), codes.OK)
	if len(st.sent) != 3 {
		t.Errorf("%d messages, want 3 (8 ranges, 3 a message)", len(st.sent))
	}
	var got []int64
	for _, msg := range st.sent {
		if msg.GetBlockMetadataType() != csi.BlockMetadataType_VARIABLE_LENGTH || msg.GetVolumeCapacityBytes() != size {
			t.Errorf("message %v: want VARIABLE_LENGTH and capacity %d", msg, size)
		}
		if len(msg.GetBlockMetadata()) > 3 {
			t.Errorf("message with %d ranges, max_results 3", len(msg.GetBlockMetadata()))
		}
		for _, b := range msg.GetBlockMetadata() {
			if b.GetSizeBytes() != storage.BlockSize {
				t.Errorf("range %v, want one block", b)
			}
			got = append(got, b.GetByteOffset()/storage.BlockSize)
		}
	}
	if len(got) != len(changed) {
		t.Fatalf("blocks %v, want %v", got, changed)
	}
	for i := range got {
		if got[i] != changed[i] {
			t.Fatalf("blocks %v, want %v", got, changed)
		}
	}

	alloc := &allocStream{}
	wantCode(t, s.meta.GetMetadataAllocated(&csi.GetMetadataAllocatedRequest{SnapshotId: base}, alloc), codes.OK)
	if len(alloc.sent) != 1 || len(alloc.sent[0].GetBlockMetadata()) != 1 || alloc.sent[0].GetBlockMetadata()[0].GetSizeBytes() != 2*storage.BlockSize {
		t.Errorf("allocated of base: %v, want one message with one range of two blocks", alloc.sent)
	}

	empty := &deltaStream{}
	wantCode(t, s.meta.GetMetadataDelta(&csi.GetMetadataDeltaRequest{BaseSnapshotId: target, TargetSnapshotId: target}, empty), codes.OK)
	if len(empty.sent) != 1 || len(empty.sent[0].GetBlockMetadata()) != 0 || empty.sent[0].GetVolumeCapacityBytes() != size {
		t.Errorf("empty delta: %v, want one message without ranges", empty.sent)
	}

	wantCode(t, s.meta.GetMetadataDelta(&csi.GetMetadataDeltaRequest{BaseSnapshotId: base, TargetSnapshotId: target, StartingOffset: size + 1}, &deltaStream{}), codes.OutOfRange)
	wantCode(t, s.meta.GetMetadataAllocated(&csi.GetMetadataAllocatedRequest{SnapshotId: base, StartingOffset: -1}, &allocStream{}), codes.OutOfRange)

	other, err := s.srv.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: "other", CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)},
	})
	wantCode(t, err, codes.OK)
	so, err := s.srv.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: "so", SourceVolumeId: other.GetVolume().GetVolumeId()})
	wantCode(t, err, codes.OK)
	wantCode(t, s.meta.GetMetadataDelta(&csi.GetMetadataDeltaRequest{BaseSnapshotId: base, TargetSnapshotId: so.GetSnapshot().GetSnapshotId()}, &deltaStream{}), codes.InvalidArgument)

	broken := &deltaStream{sendErr: errors.New("client gone")}
	if err := s.meta.GetMetadataDelta(&csi.GetMetadataDeltaRequest{BaseSnapshotId: base, TargetSnapshotId: target, MaxResults: 1}, broken); err == nil {
		t.Error("a stream whose sends fail ended without error")
	}
}

// peerless is a MetadataForwarder that finds no peer: err says why.
type peerless struct{ err error }

func (p peerless) Peer(context.Context, string) (csi.SnapshotMetadataClient, string, func(), error) {
	return nil, "", nil, p.err
}

// TestSnapshotMetadataForwardingFailures: a snapshot no local pool holds is asked of
// its node only through the forwarder; when no other node holds it the answer is
// this plugin's own NotFound, and when its node cannot be found it is Unavailable
// (worth a retry), naming the snapshot. A local snapshot is never forwarded.
func TestSnapshotMetadataForwardingFailures(t *testing.T) {
	f := newFixture(t)
	unknown := storage.SnapshotID("default", "0123456789abcdef0123456789abcdef")
	lookupFailed := errors.New("pv-lister: connection refused")
	for _, c := range []struct {
		name     string
		fwd      peerless
		wantCode codes.Code
		wantMsg  string
	}{
		{"no other node holds it", peerless{fmt.Errorf("no PersistentVolume names it: %w", storage.ErrNotFound)}, codes.NotFound, "not found"},
		{"its node cannot be found", peerless{lookupFailed}, codes.Unavailable, "connection refused"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := controller.NewMetadata(f.engine).Forwarding(c.fwd)
			err := m.GetMetadataAllocated(&csi.GetMetadataAllocatedRequest{SnapshotId: unknown}, &allocStream{})
			wantCode(t, err, c.wantCode)
			if !strings.Contains(err.Error(), c.wantMsg) || !strings.Contains(err.Error(), unknown) {
				t.Errorf("error %v: want %q and the snapshot's ID", err, c.wantMsg)
			}
			err = m.GetMetadataDelta(&csi.GetMetadataDeltaRequest{BaseSnapshotId: unknown, TargetSnapshotId: unknown}, &deltaStream{})
			wantCode(t, err, c.wantCode)
		})
	}
	vol := f.mustCreate(t, "vol")
	snap, err := f.srv.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: vol.GetVolumeId()})
	wantCode(t, err, codes.OK)
	m := controller.NewMetadata(f.engine).Forwarding(peerless{lookupFailed})
	err = m.GetMetadataAllocated(&csi.GetMetadataAllocatedRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId()}, &allocStream{})
	wantCode(t, err, codes.FailedPrecondition) // a directory volume's snapshot, answered here
}
