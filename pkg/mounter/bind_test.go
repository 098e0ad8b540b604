package mounter

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/berth-csi/berth/internal/testutil"
)

func TestBindReadWrite(t *testing.T) {
	testutil.RequireRoot(t)
	dirs := mkdirs(t, t.TempDir(), "src", "target")
	src, target := dirs[0], dirs[1]
	mustBind(t, src, target, Options{})

	if err := os.WriteFile(filepath.Join(target, "f"), []byte("through target"), 0o644); err != nil {
		t.Fatalf("write through target: %v", err)
	}
	got, err := os.ReadFile(filepath.Join(src, "f"))
	if err != nil || string(got) != "through target" {
		t.Errorf("read from source = %q, %v; want %q", got, err, "through target")
	}
	checkOptions(t, target, []string{"rw", "nosuid", "nodev"}, []string{"ro"})
}

func TestBindReadOnly(t *testing.T) {
	testutil.RequireRoot(t)
	dirs := mkdirs(t, t.TempDir(), "src", "target")
	src, target := dirs[0], dirs[1]
	mustBind(t, src, target, Options{ReadOnly: true})

	err := os.WriteFile(filepath.Join(target, "f"), []byte("x"), 0o644)
	if !errors.Is(err, unix.EROFS) {
		t.Errorf("write through read-only target: %v, want EROFS", err)
	}
	if m := mustAt(t, target); !m.ReadOnly {
		t.Errorf("At(target).ReadOnly = false, options %q", m.Options)
	}
	checkOptions(t, target, []string{"ro", "nosuid", "nodev"}, nil)
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644); err != nil {
		t.Errorf("write to source of a read-only bind: %v", err)
	}
}

func TestBindFlags(t *testing.T) {
	testutil.RequireRoot(t)
	tests := []struct {
		name     string
		flags    []string
		want     []string
		unwanted []string
	}{
		{name: "noexec", flags: []string{"noexec"}, want: []string{"noexec", "nosuid", "nodev"}},
		{name: "noatime", flags: []string{"noatime"}, want: []string{"noatime"}, unwanted: []string{"relatime"}},
		{name: "nodiratime", flags: []string{"nodiratime"}, want: []string{"nodiratime"}},
		{name: "strictatime", flags: []string{"strictatime"}, unwanted: []string{"relatime", "noatime"}},
		{name: "ro as a flag", flags: []string{"ro"}, want: []string{"ro"}},
		{name: "nosuid and nodev are always set", flags: []string{"rw", "exec"}, want: []string{"rw", "nosuid", "nodev"}, unwanted: []string{"noexec"}},
		{name: "sync is a superblock flag and changes nothing", flags: []string{"sync"}, want: []string{"rw"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			flags, err := ParseFlags(tt.flags)
			if err != nil {
				t.Fatal(err)
			}
			dirs := mkdirs(t, t.TempDir(), "src", "target")
			mustBind(t, dirs[0], dirs[1], Options{Flags: flags})
			checkOptions(t, dirs[1], tt.want, tt.unwanted)
		})
	}
}

func TestBindKeepsSourceMountFlags(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	fs := mountTmpfs(t, dir, "fs", unix.MS_NOEXEC|unix.MS_NOATIME)
	src := mkdirs(t, fs, "src")[0]
	// Make the source's mount read-only too, without touching the tmpfs.
	if err := unix.Mount("", fs, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOEXEC|unix.MS_NOATIME, ""); err != nil {
		t.Fatal(err)
	}
	targets := mkdirs(t, dir, "inherit", "explicit-atime")

	mustBind(t, src, targets[0], Options{})
	checkOptions(t, targets[0], []string{"ro", "noexec", "noatime", "nosuid", "nodev"}, []string{"rw"})
	if m := mustAt(t, targets[0]); !m.ReadOnly {
		t.Errorf("bind of a read-only source is not ReadOnly: %q", m.Options)
	}

	// An explicit atime flag wins over the source's policy when the kernel
	// has not locked it (it has not, outside a user namespace).
	mustBind(t, src, targets[1], Options{Flags: unix.MS_RELATIME})
	checkOptions(t, targets[1], []string{"ro", "noexec", "relatime"}, []string{"noatime"})
}

func TestBindErrors(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	dirs := mkdirs(t, dir, "src", "target")
	tests := []struct {
		name           string
		source, target string
	}{
		{name: "missing source", source: filepath.Join(dir, "missing"), target: dirs[1]},
		{name: "missing target", source: dirs[0], target: filepath.Join(dir, "missing")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			detachOnCleanup(t, tt.target)
			err := Bind(tt.source, tt.target, Options{})
			if !errors.Is(err, unix.ENOENT) {
				t.Errorf("Bind(%s, %s) = %v, want ENOENT", tt.source, tt.target, err)
			}
			if mounted, _ := IsMountPoint(tt.target); mounted {
				t.Errorf("failed Bind left a mount at %s", tt.target)
			}
		})
	}
}

func TestBindBlock(t *testing.T) {
	testutil.RequireRoot(t)
	dev := attachLoop(t, 10<<20)
	target := filepath.Join(t.TempDir(), "block")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	detachOnCleanup(t, target)
	if err := BindBlock(dev, target, Options{}); err != nil {
		t.Fatalf("BindBlock(%s, %s): %v", dev, target, err)
	}

	// The device must open through the target: a nodev mount would refuse.
	want := bytes.Repeat([]byte("berth"), 100)
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open published device: %v", err)
	}
	defer f.Close()
	if _, err := f.WriteAt(want, 4096); err != nil {
		t.Fatalf("write through target: %v", err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := f.ReadAt(got, 4096); err != nil || !bytes.Equal(got, want) {
		t.Errorf("read back through target: %v, equal=%v", err, bytes.Equal(got, want))
	}
	var st unix.Stat_t
	if err := unix.Stat(target, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		t.Errorf("target after BindBlock: mode %#o, %v; want a block device", st.Mode, err)
	}
	checkOptions(t, target, []string{"nosuid"}, []string{"nodev"})

	if mounted, err := IsMountPoint(target); !mounted || err != nil {
		t.Errorf("IsMountPoint(block target) = %v, %v; want true", mounted, err)
	}
	m := mustAt(t, target)
	if want := "/" + filepath.Base(dev); m.Root != want {
		t.Errorf("At(block target).Root = %q, want %q", m.Root, want)
	}
	if same, err := SameSource(m, dev); !same || err != nil {
		t.Errorf("SameSource(block mount, %s) = %v, %v; want true", dev, same, err)
	}
	f.Close()
	if err := Unmount(target); err != nil {
		t.Fatalf("Unmount(block target): %v", err)
	}
	if mounted, err := IsMountPoint(target); mounted || err != nil {
		t.Errorf("IsMountPoint after Unmount = %v, %v; want false", mounted, err)
	}
}

func TestBindBlockRejects(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	dirs := mkdirs(t, dir, "dir-source", "dir-target")
	file := filepath.Join(dir, "file-target")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	type testCase struct {
		name           string
		source, target string
		o              Options
		wantErr        error
	}
	run := func(t *testing.T, tt testCase) {
		t.Helper()
		detachOnCleanup(t, tt.target)
		err := BindBlock(tt.source, tt.target, tt.o)
		if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
			t.Errorf("BindBlock(%s, %s, %+v) = %v, want an error (matching %v)", tt.source, tt.target, tt.o, err, tt.wantErr)
		}
		if mounted, _ := IsMountPoint(tt.target); mounted {
			t.Errorf("failed BindBlock left a mount at %s", tt.target)
		}
	}
	for _, tt := range []testCase{
		{name: "directory source", source: dirs[0], target: file},
		{name: "character device source", source: "/dev/null", target: file},
		{name: "missing source", source: filepath.Join(dir, "missing"), target: file, wantErr: unix.ENOENT},
	} {
		t.Run(tt.name, func(t *testing.T) { run(t, tt) })
	}
	t.Run("with a block device", func(t *testing.T) {
		dev := attachLoop(t, 1<<20)
		for _, tt := range []testCase{
			{name: "directory target", source: dev, target: dirs[1]},
			{name: "missing target", source: dev, target: filepath.Join(dir, "missing"), wantErr: unix.ENOENT},
			{name: "nodev flag", source: dev, target: file, o: Options{Flags: unix.MS_NODEV}, wantErr: ErrFlagNotAllowed},
		} {
			t.Run(tt.name, func(t *testing.T) { run(t, tt) })
		}
	})
}

// userNSDirEnv, when set, makes TestBindInUserNamespace run its checks: it is
// set for the copy of the test binary started in a new user namespace.
const userNSDirEnv = "BERTH_MOUNTER_TEST_USERNS_DIR"

// TestBindInUserNamespace checks that Bind works where the kernel locks the
// flags of inherited mounts, as in a user namespace: a plain remount that
// drops noexec fails with EPERM there, Bind does not.
func TestBindInUserNamespace(t *testing.T) {
	if dir := os.Getenv(userNSDirEnv); dir != "" {
		bindInUserNamespace(t, dir)
		return
	}
	testutil.RequireRoot(t)
	dir := t.TempDir()
	fs := mountTmpfs(t, dir, "fs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_NOATIME)
	mkdirs(t, fs, "src")
	mkdirs(t, dir, "target")

	cmd := exec.Command(os.Args[0], "-test.run=^TestBindInUserNamespace$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), userNSDirEnv+"="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}},
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSPC) {
			t.Skipf("cannot create a user namespace here: %v", err)
		}
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("test in a user namespace: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "--- PASS: TestBindInUserNamespace") {
		t.Fatalf("test in a user namespace did not pass:\n%s", out.String())
	}
}

// bindInUserNamespace runs in a new user and mount namespace, where the
// tmpfs at dir/fs is an inherited mount with locked flags. Its mounts vanish
// with the namespace when the process exits.
func bindInUserNamespace(t *testing.T, dir string) {
	src, target := filepath.Join(dir, "fs", "src"), filepath.Join(dir, "target")

	if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_NOSUID|unix.MS_NODEV, "")
	if !errors.Is(err, unix.EPERM) {
		t.Fatalf("plain remount dropping locked noexec = %v, want EPERM: flags are not locked, the test proves nothing", err)
	}
	if err := Unmount(target); err != nil {
		t.Fatal(err)
	}

	if err := Bind(src, target, Options{ReadOnly: true}); err != nil {
		t.Fatalf("Bind of a source with locked flags: %v", err)
	}
	checkOptions(t, target, []string{"ro", "noexec", "noatime", "nosuid", "nodev"}, nil)
	if err := Unmount(target); err != nil {
		t.Fatal(err)
	}

	// An atime policy other than the locked one cannot be honoured: Bind
	// fails and leaves nothing mounted.
	err = Bind(src, target, Options{Flags: unix.MS_RELATIME})
	if !errors.Is(err, unix.EPERM) {
		t.Errorf("Bind asking relatime of a locked noatime source = %v, want EPERM", err)
	}
	if mounted, err := IsMountPoint(target); mounted || err != nil {
		t.Errorf("IsMountPoint after failed remount = %v, %v; want false: Bind must detach", mounted, err)
	}
}

func BenchmarkBindUnmount(b *testing.B) {
	testutil.RequireRoot(b)
	dirs := mkdirs(b, b.TempDir(), "src", "target")
	detachOnCleanup(b, dirs[1])
	for b.Loop() {
		if err := Bind(dirs[0], dirs[1], Options{ReadOnly: true}); err != nil {
			b.Fatal(err)
		}
		if err := Unmount(dirs[1]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRawBindUmount(b *testing.B) {
	testutil.RequireRoot(b)
	dirs := mkdirs(b, b.TempDir(), "src", "target")
	detachOnCleanup(b, dirs[1])
	for b.Loop() {
		if err := unix.Mount(dirs[0], dirs[1], "", unix.MS_BIND, ""); err != nil {
			b.Fatal(err)
		}
		if err := unix.Unmount(dirs[1], 0); err != nil {
			b.Fatal(err)
		}
	}
}
