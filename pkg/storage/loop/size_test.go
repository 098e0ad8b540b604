package loop_test

import (
	"errors"
	"os"
	"testing"

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
