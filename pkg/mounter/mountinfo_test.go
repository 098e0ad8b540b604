package mounter

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/berth-csi/berth/internal/testutil"
)

func TestIsMountPoint(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	dirs := mkdirs(t, dir, "src/sub", "target", "plain")
	src, target := filepath.Dir(dirs[0]), dirs[1]
	mustBind(t, src, target, Options{})
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		path    string
		want    bool
		wantErr error
	}{
		{name: "plain directory", path: dirs[2]},
		{name: "same-filesystem subdirectory", path: dirs[0]},
		{name: "bind of a same-filesystem directory", path: target, want: true},
		{name: "trailing slash", path: target + "/", want: true},
		{name: "directory inside the bind", path: filepath.Join(target, "sub")},
		{name: "symlink to a mount point is not followed", path: link},
		{name: "root", path: "/", want: true},
		{name: "missing", path: filepath.Join(dir, "missing"), wantErr: fs.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := IsMountPoint(tt.path)
			if got != tt.want || !errors.Is(err, tt.wantErr) {
				t.Errorf("IsMountPoint(%s) = %v, %v; want %v, %v", tt.path, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestAt(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	tmp := mountTmpfs(t, dir, "fs", 0)
	mkdirs(t, tmp, "a/b")
	target, plain := mkdirs(t, dir, "target")[0], mkdirs(t, dir, "plain")[0]
	alias := filepath.Join(dir, "alias")
	if err := os.Symlink(dir, alias); err != nil {
		t.Fatal(err)
	}

	for _, p := range []string{plain, filepath.Join(dir, "missing"), filepath.Join(tmp, "a")} {
		if m, err := At(p); m != nil || err != nil {
			t.Errorf("At(%s) = %+v, %v; want nil, nil", p, m, err)
		}
	}

	mustBind(t, filepath.Join(tmp, "a/b"), target, Options{ReadOnly: true})
	fsMount := mustAt(t, tmp)
	realTarget, err := filepath.EvalSymlinks(target)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{target, target + "/", filepath.Join(alias, "target")} {
		m := mustAt(t, p)
		if m.Root != "/a/b" || m.Mountpoint != realTarget || m.FSType != "tmpfs" ||
			m.Major != fsMount.Major || m.Minor != fsMount.Minor || !m.ReadOnly {
			t.Errorf("At(%s) = %+v; want Root /a/b, Mountpoint %s, tmpfs %d:%d, ReadOnly",
				p, m, realTarget, fsMount.Major, fsMount.Minor)
		}
	}

	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, target, 0, unix.STATX_MNT_ID, &stx); err != nil {
		t.Fatal(err)
	}
	if m := mustAt(t, target); stx.Mask&unix.STATX_MNT_ID != 0 && m.ID != int(stx.Mnt_id) {
		t.Errorf("At(%s).ID = %d; want the mount ID statx reports, %d", target, m.ID, stx.Mnt_id)
	}

	// Stacked mounts: At reports the top one, the one a path lookup sees.
	mustBind(t, filepath.Join(tmp, "a"), target, Options{})
	if m := mustAt(t, target); m.Root != "/a" || m.ReadOnly {
		t.Errorf("At(stacked target) = %+v; want the top mount, Root /a, read-write", m)
	}
	if err := Unmount(target); err != nil {
		t.Fatal(err)
	}
	if m := mustAt(t, target); m.Root != "/a/b" {
		t.Errorf("At(target) after unmounting the top = %+v; want Root /a/b", m)
	}
}

func TestSameSource(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	dirs := mkdirs(t, dir, "vol", "other", "target", "base/sub", "view", "target2")
	vol, other, target := dirs[0], dirs[1], dirs[2]
	mustBind(t, vol, target, Options{})
	m := mustAt(t, target)

	// The same path inside another filesystem is not the same source.
	tmp := mountTmpfs(t, dir, "fs", 0)
	lookalike := mkdirs(t, tmp, m.Root)[0]

	// A directory reached through a bind mount: base is bound on view, and
	// base/sub, seen as view/sub, is bound on target2.
	mustBind(t, filepath.Join(dir, "base"), dirs[4], Options{})
	mustBind(t, filepath.Join(dirs[4], "sub"), dirs[5], Options{})
	m2 := mustAt(t, dirs[5])

	tests := []struct {
		name string
		m    *MountInfo
		dir  string
		want bool
	}{
		{name: "the bound directory", m: m, dir: vol, want: true},
		{name: "through a symlink", m: m, dir: filepath.Join(dir, "alias-vol"), want: true},
		{name: "another directory of the same filesystem", m: m, dir: other},
		{name: "a parent of the bound directory", m: m, dir: dir},
		{name: "same path in another filesystem", m: m, dir: lookalike},
		{name: "under a bind mount, by its own path", m: m2, dir: dirs[3], want: true},
		{name: "under a bind mount, through the bind", m: m2, dir: filepath.Join(dirs[4], "sub"), want: true},
		{name: "under a bind mount, its parent", m: m2, dir: dirs[4]},
		{name: "nil mount", m: nil, dir: vol},
	}
	if err := os.Symlink(vol, filepath.Join(dir, "alias-vol")); err != nil {
		t.Fatal(err)
	}
	// Each case twice: as At returns the mount (compared by inode), and without
	// its ID (compared through the mount table, as for a file or a covered mount).
	for _, how := range []string{"by inode", "by mount table"} {
		for _, tt := range tests {
			t.Run(how+"/"+tt.name, func(t *testing.T) {
				m := tt.m
				if m != nil && how == "by mount table" {
					c := *m
					c.ID = 0
					m = &c
				}
				got, err := SameSource(m, tt.dir)
				if got != tt.want || err != nil {
					t.Errorf("SameSource(%+v, %s) = %v, %v; want %v", m, tt.dir, got, err, tt.want)
				}
			})
		}
	}
	if _, err := SameSource(m, filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("SameSource of a missing directory: %v, want ErrNotExist", err)
	}

	// A mount covered by another one still shows its own source.
	mustBind(t, other, target, Options{})
	if got, err := SameSource(m, vol); !got || err != nil {
		t.Errorf("SameSource(covered mount, its source) = %v, %v; want true", got, err)
	}
	if got, err := SameSource(m, other); got || err != nil {
		t.Errorf("SameSource(covered mount, the mount above's source) = %v, %v; want false", got, err)
	}
}

func TestSameSourceLoopFilesystem(t *testing.T) {
	testutil.RequireRoot(t)
	dev := attachLoop(t, 32<<20)
	if out, err := exec.Command("mkfs.ext4", "-q", dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 %s: %v: %s", dev, err, out)
	}
	dir := t.TempDir()
	mnt := mkdirs(t, dir, "mnt")[0]
	detachOnCleanup(t, mnt)
	if err := unix.Mount(dev, mnt, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	vols := mkdirs(t, mnt, "pool/vol1", "pool/vol2")
	target := mkdirs(t, dir, "target")[0]
	mustBind(t, vols[0], target, Options{})
	m := mustAt(t, target)
	if m.Root != "/pool/vol1" || m.FSType != "ext4" {
		t.Errorf("At(target) = %+v; want Root /pool/vol1 on ext4", m)
	}
	for _, tt := range []struct {
		dir  string
		want bool
	}{{vols[0], true}, {vols[1], false}, {mnt, false}} {
		if got, err := SameSource(m, tt.dir); got != tt.want || err != nil {
			t.Errorf("SameSource(%s) = %v, %v; want %v", tt.dir, got, err, tt.want)
		}
	}
}

// TestHoldingMountFallback checks the mount-table search SameSource uses on
// kernels whose statx does not report a mount ID: it must find the mount the
// kernel reports.
func TestHoldingMountFallback(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	dirs := mkdirs(t, dir, "base/sub", "view", "stack")
	tmp := mountTmpfs(t, dir, "fs", 0)
	mkdirs(t, tmp, "x/y")
	mustBind(t, filepath.Join(dir, "base"), dirs[1], Options{})
	mustBind(t, tmp, dirs[2], Options{})
	mustBind(t, filepath.Join(tmp, "x"), dirs[2], Options{})
	for _, p := range []string{dir, dirs[0], filepath.Join(dirs[1], "sub"), tmp, filepath.Join(tmp, "x/y"), dirs[2], filepath.Join(dirs[2], "y"), "/"} {
		var stx unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, p, 0, unix.STATX_MNT_ID, &stx); err != nil {
			t.Fatal(err)
		}
		if stx.Mask&unix.STATX_MNT_ID == 0 {
			t.Skip("kernel statx reports no mount ID")
		}
		byID, err := holdingMount(p, &stx)
		if err != nil {
			t.Fatal(err)
		}
		byPrefix, err := holdingMount(p, &unix.Statx_t{})
		if err != nil {
			t.Fatal(err)
		}
		if byID.ID != byPrefix.ID {
			t.Errorf("holdingMount(%s): by mount ID %d (%s), by prefix %d (%s)", p, byID.ID, byID.Mountpoint, byPrefix.ID, byPrefix.Mountpoint)
		}
	}
}

// TestStaleMount makes a FUSE mount whose server is gone (its /dev/fuse file
// closed before answering anything), the state a crashed FUSE daemon leaves.
func TestStaleMount(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("needs FUSE: %v", err)
	}
	target := mkdirs(t, t.TempDir(), "target")[0]
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	detachOnCleanup(t, target)
	err = unix.Mount("berth-test", target, "fuse", unix.MS_NOSUID|unix.MS_NODEV,
		fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0", fd))
	unix.Close(fd)
	if err != nil {
		t.Fatalf("mount fuse: %v", err)
	}

	mounted, err := IsMountPoint(target)
	if !mounted || !errors.Is(err, ErrStale) || !errors.Is(err, unix.ENOTCONN) {
		t.Errorf("IsMountPoint(stale) = %v, %v; want true, ErrStale and ENOTCONN", mounted, err)
	}
	below := filepath.Join(target, "x")
	if mounted, err := IsMountPoint(below); mounted || !errors.Is(err, ErrStale) {
		t.Errorf("IsMountPoint(below a stale mount) = %v, %v; want false, ErrStale", mounted, err)
	}
	if m := mustAt(t, target); m.FSType != "fuse" {
		t.Errorf("At(stale) = %+v, want the fuse mount", m)
	}
	if err := Unmount(target); err != nil {
		t.Fatalf("Unmount(stale): %v", err)
	}
	if mounted, err := IsMountPoint(target); mounted || err != nil {
		t.Errorf("IsMountPoint after Unmount(stale) = %v, %v; want false", mounted, err)
	}
}

func BenchmarkIsMountPoint(b *testing.B) {
	testutil.RequireRoot(b)
	dirs := mkdirs(b, b.TempDir(), "src", "target")
	mustBind(b, dirs[0], dirs[1], Options{})
	for b.Loop() {
		if ok, err := IsMountPoint(dirs[1]); !ok || err != nil {
			b.Fatal(ok, err)
		}
	}
}

func BenchmarkAt(b *testing.B) {
	testutil.RequireRoot(b)
	dirs := mkdirs(b, b.TempDir(), "src", "target")
	mustBind(b, dirs[0], dirs[1], Options{})
	for b.Loop() {
		if m, err := At(dirs[1]); m == nil || err != nil {
			b.Fatal(m, err)
		}
	}
}

// TestAtPropagation: Optional carries the mount's propagation, "" when private.
func TestAtPropagation(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	src, target := mkdirs(t, dir, "src")[0], mkdirs(t, dir, "target")[0]
	mustBind(t, src, target, Options{})
	if err := unix.Mount("", target, "", unix.MS_PRIVATE, ""); err != nil {
		t.Fatal(err)
	}
	if m, err := At(target); err != nil || m == nil || m.Optional != "" {
		t.Fatalf("At(%s) of a private bind = %+v, %v; want Optional empty", target, m, err)
	}
	if err := unix.Mount("", target, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	m, err := At(target)
	if err != nil || m == nil || len(m.Optional) < len("shared:1") || m.Optional[:len("shared:")] != "shared:" {
		t.Fatalf("At(%s) of a shared bind = %+v, %v; want Optional shared:<n>", target, m, err)
	}
}
