package loop_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-csi/berth/pkg/storage/loop"
	"golang.org/x/sys/unix"
)

// TestSetCapacity: a grown file shows in the device only after SetCapacity.
func TestSetCapacity(t *testing.T) {
	dir := poolDir(t)
	img := newImage(t, dir, "grow.img", 64*mib)
	d := mustAttach(t, img, false)

	if err := os.Truncate(img, 96*mib); err != nil {
		t.Fatal(err)
	}
	if got, err := loop.Size(d.Path); err != nil || got != 64*mib {
		t.Errorf("Size before SetCapacity = %d, %v, want %d (the kernel does not notice)", got, err, 64*mib)
	}
	if err := loop.SetCapacity(d); err != nil {
		t.Fatalf("SetCapacity: %v", err)
	}
	if got, err := loop.Size(d.Path); err != nil || got != 96*mib {
		t.Errorf("Size after SetCapacity = %d, %v, want %d", got, err, 96*mib)
	}
	if again, err := loop.Find(img); err != nil || again == nil || again.Number != d.Number {
		t.Errorf("Find after SetCapacity = %+v, %v, want %s", again, err, d.Path)
	}

	if err := loop.Detach(d); err != nil {
		t.Fatal(err)
	}
	if err := loop.SetCapacity(d); !errors.Is(err, unix.ENXIO) {
		t.Errorf("SetCapacity of a detached device = %v, want ENXIO", err)
	}
}

// TestSizeRefusesWhatIsNotADevice: Size opens only the block device at the path
// itself. A symlink planted there (even to a real device) is not followed, a FIFO
// does not block the caller, and a regular file is refused before any ioctl.
func TestSizeRefusesWhatIsNotADevice(t *testing.T) {
	dir := poolDir(t)
	d := mustAttach(t, newImage(t, dir, "real.img", 64*mib), false)
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// A Size that blocked on the FIFO is released at cleanup by a writer.
	t.Cleanup(func() {
		if fd, err := unix.Open(fifo, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0); err == nil {
			unix.Close(fd)
		}
	})
	link := filepath.Join(dir, "link")
	if err := os.Symlink(d.Path, link); err != nil {
		t.Fatal(err)
	}
	file := newImage(t, dir, "file", mib)

	tests := []struct {
		name, path string
		want       error // nil: any error
	}{
		{"a symlink to a block device", link, unix.ELOOP},
		{"a FIFO", fifo, unix.ENOTTY},
		{"a regular file", file, unix.ENOTTY},
		{"a directory", dir, unix.ENOTTY},
		{"a character device", "/dev/null", unix.ENOTTY},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			type result struct {
				n   int64
				err error
			}
			done := make(chan result, 1)
			go func() {
				n, err := loop.Size(tc.path)
				done <- result{n, err}
			}()
			select {
			case r := <-done:
				if !errors.Is(r.err, tc.want) {
					t.Fatalf("Size(%s) = %d, %v; want an error wrapping %v", tc.path, r.n, r.err, tc.want)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("Size(%s) still blocked after 5s", tc.path)
			}
		})
	}
	if got, err := loop.Size(d.Path); err != nil || got != 64*mib {
		t.Errorf("Size of the device itself = %d, %v; want %d", got, err, 64*mib)
	}
}
