package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/berth-csi/berth/internal/testutil"
)

func TestFloorRecordIsAboutThreeHundredBytes(t *testing.T) {
	if n := len(floorRecord); n < 250 || n > 350 {
		t.Errorf("floor record is %d bytes, want about 300", n)
	}
}

func TestDurableFloorLeavesAnEmptyPool(t *testing.T) {
	root := t.TempDir()
	f, err := newDurableFloor(root)
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	if _, err := f.run(context.Background(), "t", 5); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"tmp", "volumes", "trash"} {
		entries, err := os.ReadDir(filepath.Join(root, d))
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 0 {
			t.Errorf("%s/ holds %d entries after the floor run, want 0", d, len(entries))
		}
	}
}

func TestDurableFloorCommitsAVolume(t *testing.T) {
	root := t.TempDir()
	f, err := newDurableFloor(root)
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	if err := f.create("v"); err != nil {
		t.Fatal(err)
	}
	rec, err := os.ReadFile(filepath.Join(root, "volumes", "v", "record.json"))
	if err != nil {
		t.Fatal(err)
	}
	if string(rec) != string(floorRecord) {
		t.Errorf("committed record = %q, want the floor record", rec)
	}
	if _, err := os.Stat(filepath.Join(root, "tmp", "v")); !os.IsNotExist(err) {
		t.Errorf("tmp/v after commit: %v, want it gone", err)
	}
}

func TestDurableFloorStopsWhenCancelled(t *testing.T) {
	f, err := newDurableFloor(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := f.run(ctx, "t", 5); err == nil {
		t.Error("run with a cancelled context succeeded, want its error")
	}
}

func TestRawMountFloorLeavesNoMount(t *testing.T) {
	testutil.RequireRoot(t)
	root := t.TempDir()
	src, tgt := filepath.Join(root, "src"), filepath.Join(root, "tgt")
	for _, p := range []string{src, tgt} {
		if err := os.Mkdir(p, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	lat, err := rawMountFloor(context.Background(), src, tgt, 10, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(lat) != 10 {
		t.Errorf("got %d latencies, want 10", len(lat))
	}
	full := filepath.Join(root, "full")
	if lat, err = rawMountFloor(context.Background(), src, full, 10, true); err != nil {
		t.Fatal(err)
	}
	if len(lat) != 10 {
		t.Errorf("full: got %d latencies, want 10", len(lat))
	}
	if _, err := os.Stat(full); !os.IsNotExist(err) {
		t.Errorf("full: stat %s after the run: %v, want it removed", full, err)
	}
	points, err := mountPointsUnder(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(points) != 0 {
		t.Errorf("mounts left under %s: %v", root, points)
	}
}

func TestRemoveTreeDetachesMountsFirst(t *testing.T) {
	testutil.RequireRoot(t)
	base := t.TempDir()
	keep := filepath.Join(base, "keep")
	tree := filepath.Join(base, "tree")
	tgt := filepath.Join(tree, "a b", "mount")
	for _, p := range []string{keep, tgt} {
		if err := os.MkdirAll(p, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	precious := filepath.Join(keep, "precious")
	if err := os.WriteFile(precious, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Mounted twice on one target, under a name mountinfo escapes.
	for range 2 {
		if err := unix.Mount(keep, tgt, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = unmountUnder(tree) })

	if err := removeTree(tree); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(precious); err != nil {
		t.Errorf("a file reachable through a mount was removed: %v", err)
	}
	if _, err := os.Stat(tree); !os.IsNotExist(err) {
		t.Errorf("stat %s after removeTree: %v, want it gone", tree, err)
	}
}
