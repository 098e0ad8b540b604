package crash

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/container-storage-interface/spec/lib/go/csi"
)

// TestCrashDuringFrozenCopy kills the driver while it copies a published image
// volume into a snapshot with the volume's filesystem frozen (the pool's filesystem
// has no reflinks, so the copy takes a while). The restarted driver must thaw the
// filesystem before it reports ready: the pod's writes go on, and the freeze record
// is gone.
func TestCrashDuringFrozenCopy(t *testing.T) {
	testutil.RequireRoot(t)
	s := newImageSite(t, driverBinary(t))
	p := s.start(t)
	v := createImageVolume(t, p, "frozen")
	v.mustCall(t, p, opStage, 0)
	v.mustCall(t, p, opPublish, 0)
	fill(t, filepath.Join(v.target, "fill"), 200<<20)

	marker := filepath.Join(s.pool, "volumes", v.hash, "frozen.json")
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, _ = p.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: v.id})
	}()
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := os.Stat(marker); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the copy never froze the volume's filesystem")
		}
		time.Sleep(time.Millisecond)
	}
	p.kill()
	t.Cleanup(func() { testutil.ThawFS(v.staging) }) // never leave the test machine's filesystem frozen

	s.start(t)
	written := make(chan error, 1)
	go func() { written <- writeSync(filepath.Join(v.target, "after-restart"), []byte("still writable")) }()
	select {
	case err := <-written:
		if err != nil {
			t.Fatalf("write after the restart: %v", err)
		}
	case <-time.After(20 * time.Second):
		testutil.ThawFS(v.staging)
		t.Fatal("the pod's writes still hang after the driver restarted: the filesystem was left frozen")
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Errorf("freeze record still there after the thaw: %v", err)
	}
}

// fill writes n random bytes to path and syncs them, so the image holds data to copy.
func fill(t *testing.T, path string, n int) {
	t.Helper()
	buf := make([]byte, n)
	r := rand.NewChaCha8([32]byte{1})
	_, _ = r.Read(buf)
	if err := writeSync(path, buf); err != nil {
		t.Fatal(err)
	}
}

func writeSync(path string, data []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
