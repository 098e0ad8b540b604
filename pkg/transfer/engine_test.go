package transfer

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"golang.org/x/sys/unix"
)

// A snapshot of a dir pool's volume, sent by one engine's server and pulled by
// a client: the tree arrives, and the source cannot be deleted while it is read.
func TestPullEngineSnapshot(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	e := testengine.Start(t, storage.Config{Pools: []storage.PoolConfig{
		{Name: "default", Path: filepath.Join(t.TempDir(), "pool"), Kind: storage.KindDir}}})
	p := e.DefaultPool()
	r, err := p.Create(ctx, storage.CreateRequest{Name: "vol", RequiredBytes: 64 << 20, AccessType: storage.AccessMount})
	if err != nil {
		t.Fatal(err)
	}
	resumeTree(t, p.DataPath(r.Hash()))
	s, err := p.CreateSnapshot(ctx, "snap", r.Hash())
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); !s.Ready; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("snapshot not ready")
		}
		if s, err = p.Snapshot(s.Hash()); err != nil {
			t.Fatal(err)
		}
	}
	n := startServer(t, ServerOptions{Sources: EngineSources(e)})

	dest := filepath.Join(t.TempDir(), "data")
	o := n.pullOptions(t, s.ID, dest)
	o.Progress = &Progress{}
	held := make(chan error, 1)
	go func() { // while the snapshot is sent, its deletion is refused
		for o.Progress.Bytes.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		held <- e.DeleteSnapshot(ctx, s.ID)
	}()
	res, err := Pull(testContext(t), o)
	if err != nil {
		t.Fatal(err)
	}
	checkResumeTree(t, p.DataPath(r.Hash()), dest)
	if res.SizeBytes != r.CapacityBytes || res.AccessType != storage.AccessMount || res.Kind != KindTree {
		t.Errorf("result %+v", res)
	}
	wantErr(t, <-held, storage.ErrInUse)
	if err := e.DeleteSnapshot(ctx, s.ID); err != nil {
		t.Errorf("delete after the transfer: %v", err)
	}

	_, err = Pull(testContext(t), n.pullOptions(t, s.ID, filepath.Join(t.TempDir(), "gone")))
	wantErr(t, err, ErrNotFound)
}

// An image pool's volume on XFS, sent sparse: only its data extents travel,
// through three cut connections, and the copy has the same holes.
func TestPullEngineImage(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	mnt := testutil.MountFS(t, testutil.XFSPlain, 2<<30)
	e := testengine.Start(t, storage.Config{Pools: []storage.PoolConfig{
		{Name: "img", Path: filepath.Join(mnt, "pool"), Kind: storage.KindImage}}})
	p := e.DefaultPool()
	r, err := p.Create(ctx, storage.CreateRequest{Name: "vol", RequiredBytes: 1 << 30, AccessType: storage.AccessBlock})
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(p.VolumeDir(r.Hash()), storage.ImageFile)
	extents := map[int64][]byte{0: nil, 300 << 20: nil, 1<<30 - 2<<20: nil}
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for off := range extents {
		b := make([]byte, 2<<20)
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		extents[off] = b
		total += int64(len(b))
	}
	f.Close()

	n := startServer(t, ServerOptions{Sources: EngineSources(e)})
	proxy := newCutProxy(t, n.addr, 1500<<10, 3)
	dest := filepath.Join(mnt, "copy", "image")
	testutil.MkdirAll(t, filepath.Dir(dest))
	o := n.pullOptions(t, r.ID, dest)
	o.Addr = proxy.addr()
	o.Progress = &Progress{}
	res, err := Pull(testContext(t), o)
	if err != nil {
		t.Fatal(err)
	}
	if res.Kind != KindImage || res.AccessType != storage.AccessBlock || res.Attempts != 4 || res.Bytes != total ||
		o.Progress.Total.Load() != total {
		t.Errorf("result %+v, progress total %d; want an image, 4 attempts, %d bytes", res, o.Progress.Total.Load(), total)
	}
	st := testutil.Lstat(t, dest)
	if st.Size != 1<<30 || st.Blocks*512 > 2*total {
		t.Errorf("copy: %d bytes, %d allocated; want %d, about %d", st.Size, st.Blocks*512, 1<<30, total)
	}
	for off, b := range extents {
		if !bytes.Equal(testutil.ReadAt(t, dest, off, len(b)), b) {
			t.Errorf("data at %d differs", off)
		}
	}
	if got := testutil.Seek(t, dest, 2<<20, unix.SEEK_DATA); got != 300<<20 {
		t.Errorf("first data after the first extent at %d, want %d: holes filled", got, 300<<20)
	}
}
