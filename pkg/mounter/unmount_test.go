package mounter

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
)

// checkMounted asserts whether target is a mount point.
func checkMounted(t *testing.T, target string, want bool) {
	t.Helper()
	if got, err := IsMountPoint(target); got != want || err != nil {
		t.Errorf("IsMountPoint(%s) = %v, %v; want %v", target, got, err, want)
	}
}

func TestUnmount(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	dirs := mkdirs(t, dir, "src", "target", "plain")
	src, target := dirs[0], dirs[1]
	mustBind(t, src, target, Options{})

	if err := Unmount(target); err != nil {
		t.Fatalf("Unmount: %v", err)
	}
	checkMounted(t, target, false)
	for _, p := range []string{target, dirs[2], filepath.Join(dir, "missing")} {
		if err := Unmount(p); err != nil {
			t.Errorf("Unmount(%s) of no mount = %v, want nil", p, err)
		}
	}
}

func TestUnmountStacked(t *testing.T) {
	testutil.RequireRoot(t)
	dirs := mkdirs(t, t.TempDir(), "src", "target")
	mustBind(t, dirs[0], dirs[1], Options{})
	mustBind(t, dirs[0], dirs[1], Options{ReadOnly: true})

	if err := Unmount(dirs[1]); err != nil {
		t.Fatal(err)
	}
	checkMounted(t, dirs[1], true)
	if m := mustAt(t, dirs[1]); m.ReadOnly {
		t.Errorf("after one Unmount the top mount is still there: %+v", m)
	}
	if err := Unmount(dirs[1]); err != nil {
		t.Fatal(err)
	}
	checkMounted(t, dirs[1], false)
}

func TestUnmountDoesNotFollowSymlink(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	dirs := mkdirs(t, dir, "src", "target")
	mustBind(t, dirs[0], dirs[1], Options{})
	link := filepath.Join(dir, "link")
	if err := os.Symlink(dirs[1], link); err != nil {
		t.Fatal(err)
	}
	if err := Unmount(link); err != nil {
		t.Errorf("Unmount(symlink) = %v, want nil: a symlink is not a mount point", err)
	}
	checkMounted(t, dirs[1], true)
}

func TestUnmountBusy(t *testing.T) {
	testutil.RequireRoot(t)
	dirs := mkdirs(t, t.TempDir(), "src", "target")
	if err := os.WriteFile(filepath.Join(dirs[0], "f"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustBind(t, dirs[0], dirs[1], Options{})
	f, err := os.Open(filepath.Join(dirs[1], "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	if err := Unmount(dirs[1]); err != nil {
		t.Fatalf("Unmount(busy) = %v, want a lazy unmount", err)
	}
	checkMounted(t, dirs[1], false)
	buf := make([]byte, 4)
	if _, err := f.Read(buf); err != nil || string(buf) != "kept" {
		t.Errorf("read from a file open across the lazy unmount = %q, %v", buf, err)
	}
}
