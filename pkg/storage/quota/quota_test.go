package quota

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/berth-csi/berth/internal/testutil"
	"golang.org/x/sys/unix"
)

// imageSize is the apparent size of each sparse filesystem image: mkfs.xfs
// wants 300 MiB at least, and below 512 MiB mkfs.ext4 picks 1 KiB blocks.
const imageSize = 512 << 20

// fsSpec says how to make and mount one test filesystem.
type fsSpec struct {
	name string   // xfs or ext4
	mkfs []string // command and flags; the image path is appended
	opts string   // mount options besides loop
}

var (
	xfsPrj      = fsSpec{"xfs", []string{"mkfs.xfs", "-q", "-m", "reflink=1"}, "prjquota"}
	xfsPlain    = fsSpec{"xfs", []string{"mkfs.xfs", "-q", "-m", "reflink=1"}, ""}
	xfsNoEnf    = fsSpec{"xfs", []string{"mkfs.xfs", "-q", "-m", "reflink=1"}, "pqnoenforce"}
	ext4Prj     = fsSpec{"ext4", []string{"mkfs.ext4", "-q", "-O", "quota,project"}, "prjquota"}
	ext4NoOpt   = fsSpec{"ext4", []string{"mkfs.ext4", "-q", "-O", "quota,project"}, ""}
	ext4NoFeat  = fsSpec{"ext4", []string{"mkfs.ext4", "-q"}, ""}
	quotaSpecs  = []fsSpec{xfsPrj, ext4Prj}
	kernelCfgGz = "/proc/config.gz"
)

// mountFS makes spec's filesystem on a sparse file in a fresh temporary
// directory and loop-mounts it on another; it returns the mount point. When
// the kernel provably lacks what spec needs (per /proc/config.gz), the test is
// skipped with the reason; any other failure fails it. Cleanup unmounts
// (lazily if busy) and checks that no loop device stays attached to the file.
func mountFS(t *testing.T, spec fsSpec) string {
	t.Helper()
	testutil.RequireRoot(t)
	img := filepath.Join(t.TempDir(), spec.name+".img")
	mnt := t.TempDir()
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, imageSize); err != nil {
		t.Fatal(err)
	}
	run(t, append(spec.mkfs, img)...)
	opts := "loop"
	if spec.opts != "" {
		opts += "," + spec.opts
	}
	out, err := exec.Command("mount", "-o", opts, img, mnt).CombinedOutput()
	if err != nil {
		if reason := missingKernelSupport(spec); reason != "" {
			t.Skipf("%s; mount -o %s %s failed: %v: %s", reason, opts, spec.name, err, out)
		}
		t.Fatalf("mount -o %s %s %s: %v: %s", opts, img, mnt, err, out)
	}
	t.Cleanup(func() { unmount(t, mnt, img) })
	return mnt
}

// mountTmpfs mounts a fresh tmpfs and returns its mount point.
func mountTmpfs(t *testing.T) string {
	t.Helper()
	testutil.RequireRoot(t)
	mnt := t.TempDir()
	run(t, "mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mnt)
	t.Cleanup(func() { unmount(t, mnt, "") })
	return mnt
}

// unmount unmounts mnt, lazily if it is busy, then waits for the loop device
// over img (if any) to detach itself, as the loop mount option asks.
func unmount(t *testing.T, mnt, img string) {
	t.Helper()
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Logf("umount %s: %v: %s; detaching lazily", mnt, err, out)
		if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount -l %s: %v: %s", mnt, err, out)
		}
	}
	if img == "" {
		return
	}
	var out []byte
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var err error
		if out, err = exec.Command("losetup", "-j", img).CombinedOutput(); err != nil {
			t.Errorf("losetup -j %s: %v: %s", img, err, out)
			return
		}
		if len(bytes.TrimSpace(out)) == 0 {
			return
		}
	}
	t.Errorf("loop device still attached after unmount: %s", out)
}

// run runs a command and fails the test, with its output, if it fails.
func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// missingKernelSupport returns why this kernel cannot mount spec's
// filesystem, or "" when it should (or when that cannot be known).
func missingKernelSupport(spec fsSpec) string {
	f, err := os.Open(kernelCfgGz)
	if err != nil {
		return ""
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return ""
	}
	cfg, err := io.ReadAll(zr)
	if err != nil {
		return ""
	}
	unset := func(opt string) bool { return bytes.Contains(cfg, []byte("# "+opt+" is not set\n")) }
	switch {
	case spec.name == "xfs" && spec.opts != "" && unset("CONFIG_XFS_QUOTA"):
		return "this kernel has no XFS quota support (CONFIG_XFS_QUOTA is not set)"
	case spec.name == "ext4" && strings.Contains(strings.Join(spec.mkfs, " "), "quota") && unset("CONFIG_QFMT_V2"):
		return "this kernel cannot mount ext4 with the quota feature (CONFIG_QFMT_V2 is not set)"
	}
	return ""
}

func TestKernelABI(t *testing.T) {
	// Sizes from include/uapi/linux/dqblk_xfs.h and fs.h on every architecture.
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"fs_quota_statv", unsafe.Sizeof(fsQuotaStatV{}), 160},
		{"fs_disk_quota", unsafe.Sizeof(fsDiskQuota{}), 112},
		{"fsxattr", unsafe.Sizeof(fsxattr{}), sizeofFsxattr},
		{"fsxattr", unsafe.Sizeof(fsxattr{}), 28},
	} {
		if tc.got != tc.want {
			t.Errorf("sizeof(struct %s) = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
	if runtime.GOARCH == "amd64" || runtime.GOARCH == "arm64" {
		if fsIocFSGetXattr != 0x801c581f || fsIocFSSetXattr != 0x401c5820 {
			t.Errorf("FS_IOC_FSGETXATTR, FS_IOC_FSSETXATTR = %#x, %#x; want 0x801c581f, 0x401c5820", fsIocFSGetXattr, fsIocFSSetXattr)
		}
	}
}

func TestCheck(t *testing.T) {
	testutil.RequireRoot(t)
	tests := []struct {
		name    string
		setup   func(t *testing.T) string // returns the path to check
		wantErr error                     // nil, ErrNotEnforced or an errno
		wantMsg []string                  // substrings of the message
	}{
		{name: "xfs with prjquota", setup: mounted(xfsPrj)},
		{name: "ext4 with the feature and prjquota", setup: mounted(ext4Prj)},
		{
			name: "subdirectory of xfs with prjquota",
			setup: func(t *testing.T) string {
				dir := filepath.Join(mountFS(t, xfsPrj), "a", "b")
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				return dir
			},
		},
		{name: "xfs without prjquota", setup: mounted(xfsPlain), wantErr: ErrNotEnforced, wantMsg: []string{"xfs at ", "not mounted with prjquota"}},
		{name: "xfs with pqnoenforce", setup: mounted(xfsNoEnf), wantErr: ErrNotEnforced, wantMsg: []string{"xfs at ", "pqnoenforce"}},
		{name: "ext4 without the project feature", setup: mounted(ext4NoFeat), wantErr: ErrNotEnforced, wantMsg: []string{"ext4 at ", "-O quota,project"}},
		{name: "ext4 with the feature but without prjquota", setup: mounted(ext4NoOpt), wantErr: ErrNotEnforced, wantMsg: []string{"ext4 at ", "not mounted with prjquota", "accounted but"}},
		{name: "tmpfs", setup: mountTmpfs, wantErr: ErrNotEnforced, wantMsg: []string{"tmpfs at "}},
		{
			name:    "missing path",
			setup:   func(t *testing.T) string { return filepath.Join(t.TempDir(), "missing") },
			wantErr: unix.ENOENT,
			wantMsg: []string{"missing"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.setup(t)
			err := Check(path)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Check(%s) = %v, want nil", path, err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Check(%s) = %v, want an error wrapping %v", path, err, tc.wantErr)
			}
			t.Logf("Check: %v", err)
			if tc.wantErr == unix.ENOENT && errors.Is(err, ErrNotEnforced) {
				t.Errorf("Check(%s) = %v, which should not wrap ErrNotEnforced", path, err)
			}
			for _, s := range append(tc.wantMsg, path) {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Check(%s) = %q, want it to contain %q", path, err, s)
				}
			}
		})
	}
}

// mounted returns a setup function that mounts spec.
func mounted(spec fsSpec) func(t *testing.T) string {
	return func(t *testing.T) string { return mountFS(t, spec) }
}
