package crash

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage/loop"
)

// An interruption is the state a SIGKILL inside NodeStageVolume or
// NodeExpandVolume leaves, made deterministically: with the driver dead, the
// test does the steps the driver had done when it died, with the engine's and
// the loop package's own functions (no failpoint in the driver).
type interruption struct {
	name string
	// volume is how the volume was before the interrupted call:
	// "new" (never staged), "formatted" (staged, written to and unstaged
	// before) or "published" (staged, published and written to).
	volume string
	// crash does, with the driver dead, what the driver had done.
	crash func(t *testing.T, s *site, v *imageVolume, newSize int64)
	// devices is the number of loop devices start-up must leave: the one
	// of a volume with a staging record, none otherwise.
	devices int
	// repeat is the call kubelet repeats after the restart.
	repeat string
}

// TestCrashImageInterrupted starts the driver on each state a kill inside a
// stage or an expansion can leave, repeats the call as kubelet would, and
// checks that it succeeds and leaves exactly one loop device, the volume
// mounted, its data intact and, after an expansion, the filesystem grown.
func TestCrashImageInterrupted(t *testing.T) {
	testutil.RequireRoot(t)
	bin := driverBinary(t)
	cases := []interruption{
		{
			name: "between attach and mount, new volume", volume: "new",
			crash: markStaged(true), devices: 1, repeat: opStage,
		},
		{
			name: "between attach and mount, formatted volume", volume: "formatted",
			crash: markStaged(true), devices: 1, repeat: opStage,
		},
		{
			name: "between staging record and attach", volume: "formatted",
			crash: markStaged(false), devices: 0, repeat: opStage,
		},
		{
			// Cannot arise through the driver (the record is written first),
			// but an operator's losetup can: start-up detaches it.
			name: "attached without staging record", volume: "formatted",
			crash: func(t *testing.T, s *site, v *imageVolume, _ int64) {
				attach(t, v)
			},
			devices: 0, repeat: opStage,
		},
		{
			// A kill inside MarkStaged's atomic write (after the temporary
			// file is created, before its rename) leaves it behind.
			name: "staging record half written", volume: "formatted",
			crash: func(t *testing.T, s *site, v *imageVolume, _ int64) {
				halfWritten(t, s, v, "staged.json", 1)
			},
			devices: 0, repeat: opStage,
		},
		{
			name: "between grow and resize, image grown", volume: "published",
			crash: func(t *testing.T, s *site, v *imageVolume, newSize int64) {
				if err := os.Truncate(v.image, newSize); err != nil {
					t.Fatal(err)
				}
			},
			devices: 1, repeat: opExpand,
		},
		{
			name: "between grow and resize, recorded", volume: "published",
			crash: expandOffline(false), devices: 1, repeat: opExpand,
		},
		{
			name: "between grow and resize, device refreshed", volume: "published",
			crash: expandOffline(true), devices: 1, repeat: opExpand,
		},
		{
			// A kill inside the record update of an expansion.
			name: "expansion record half written", volume: "published",
			crash: func(t *testing.T, s *site, v *imageVolume, newSize int64) {
				if err := os.Truncate(v.image, newSize); err != nil {
					t.Fatal(err)
				}
				halfWritten(t, s, v, "record.json", 1)
			},
			devices: 1, repeat: opExpand,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, bin) })
	}
}

func (tc *interruption) run(t *testing.T, bin string) {
	s := newImageSite(t, bin)
	p := s.start(t)
	v := createImageVolume(t, p, "interrupted")
	var files []dataFile
	var overhead int64
	if tc.volume != "new" {
		v.mustCall(t, p, opStage, 0)
		fs, err := fsBytes(v.staging)
		if err != nil {
			t.Fatal(err)
		}
		overhead = v.capacity - fs
		v.mustCall(t, p, opPublish, 0)
		f, err := writeDurable(v.target, "before", []byte("written and fsynced before the kill\n"))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
		if tc.volume == "formatted" {
			v.mustCall(t, p, opUnpublish, 0)
			v.mustCall(t, p, opUnstage, 0)
		}
	}
	p.kill()
	newSize := v.capacity + growStep
	tc.crash(t, s, v, newSize)

	p = s.start(t)
	k, err := v.state(s)
	if err != nil {
		t.Fatal(err)
	}
	if len(k.devices) != tc.devices {
		t.Errorf("after start-up the pool backs %d loop devices %v, want %d", len(k.devices), k.devices, tc.devices)
	}

	switch tc.repeat {
	case opStage:
		v.mustCall(t, p, opStage, 0)
		k, err := v.state(s)
		if err != nil {
			t.Fatal(err)
		}
		if len(k.devices) != 1 || k.dev == nil || !k.stagingMount {
			t.Fatalf("after the repeated %s: devices %v, staging mounted %t; want the volume's one device mounted at %s",
				opStage, k.devices, k.stagingMount, v.staging)
		}
		v.mustCall(t, p, opPublish, 0)
	case opExpand:
		got := v.mustCall(t, p, opExpand, newSize)
		k, err := v.state(s)
		if err != nil {
			t.Fatal(err)
		}
		recorded, err := v.recordCapacity(s)
		if err != nil {
			t.Fatal(err)
		}
		fs, err := fsBytes(v.target)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case got < newSize:
			t.Errorf("%s to %d answered capacity %d", opExpand, newSize, got)
		case recorded != got:
			t.Errorf("%s answered %d, the record says %d", opExpand, got, recorded)
		case len(k.devices) != 1 || k.deviceBytes < got:
			t.Errorf("after %s to %d: devices %v, device size %d", opExpand, got, k.devices, k.deviceBytes)
		case fs+overhead < got:
			t.Errorf("after %s to %d statfs at the target reports %d bytes (+%d of log and metadata)", opExpand, got, fs, overhead)
		}
	}
	if err := checkFiles(v.target, files); err != nil {
		t.Errorf("files written and fsynced before the kill: %v", err)
	}
	if _, err := writeDurable(v.target, "after", []byte("written after the restart\n")); err != nil {
		t.Errorf("write and read back through %s: %v", v.target, err)
	}
	v.mustCall(t, p, opUnpublish, 0)
	v.mustCall(t, p, opUnstage, 0)
	if devs, err := loop.List(s.pool); err != nil || len(devs) != 0 {
		t.Errorf("after the unstage the pool backs loop devices %v (%v)", devs, err)
	}
	if !p.stop(10 * time.Second) {
		t.Error("driver did not exit within 10s of SIGTERM")
	}
}

// markStaged writes the volume's staging record as NodeStageVolume does
// first, with the engine's own MarkStaged, and, with attached, attaches its
// image as it does next: the state of a kill after those steps.
func markStaged(attached bool) func(*testing.T, *site, *imageVolume, int64) {
	return func(t *testing.T, s *site, v *imageVolume, _ int64) {
		e, stop := s.offlineEngine(t)
		defer stop()
		pool, err := e.Pool(imagePool)
		if err != nil {
			t.Fatal(err)
		}
		if err := pool.MarkStaged(v.hash, v.staging); err != nil {
			t.Fatal(err)
		}
		if attached {
			attach(t, v)
		}
	}
}

// expandOffline grows the volume as NodeExpandVolume's engine step does
// (image grown, record updated), with the engine's own Expand, and, with
// refreshed, makes the loop device see the new size: the state of a kill
// just before LOOP_SET_CAPACITY or just before xfs_growfs.
func expandOffline(refreshed bool) func(*testing.T, *site, *imageVolume, int64) {
	return func(t *testing.T, s *site, v *imageVolume, newSize int64) {
		e, stop := s.offlineEngine(t)
		defer stop()
		pool, err := e.Pool(imagePool)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Expand(t.Context(), v.hash, newSize, 0); err != nil {
			t.Fatal(err)
		}
		if !refreshed {
			return
		}
		dev, err := loop.Find(v.image)
		if err != nil || dev == nil {
			t.Fatalf("find the device of %s: %v, %v", v.image, dev, err)
		}
		if err := loop.SetCapacity(dev); err != nil {
			t.Fatal(err)
		}
	}
}

func attach(t *testing.T, v *imageVolume) {
	t.Helper()
	if _, err := loop.Attach(v.image, false); err != nil {
		t.Fatal(err)
	}
}

// halfWritten leaves in the volume's directory the temporary file of an
// atomic write of name that a kill cut off: the n-th write of the process
// (the driver numbers them from 1), created and partly written, never
// renamed.
func halfWritten(t *testing.T, s *site, v *imageVolume, name string, n int) {
	t.Helper()
	path := filepath.Join(s.pool, "volumes", v.hash, fmt.Sprintf(".%s.tmp%d", name, n))
	if err := os.WriteFile(path, []byte(`{"pa`), 0o600); err != nil {
		t.Fatal(err)
	}
}
