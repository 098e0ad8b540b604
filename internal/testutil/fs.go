package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Filesystems the tests make on loop files.
var (
	// XFSPrjQuota: XFS with reflink, mounted with project quotas enforced.
	XFSPrjQuota = FS{Name: "xfs", Mkfs: []string{"mkfs.xfs", "-q", "-f", "-m", "reflink=1"}, Opts: "prjquota"}
	// XFSPlain: XFS without quotas.
	XFSPlain = FS{Name: "xfs", Mkfs: []string{"mkfs.xfs", "-q", "-f", "-m", "reflink=1"}}
	// Ext4PrjQuota: ext4 with the quota and project features, mounted with prjquota.
	Ext4PrjQuota = FS{Name: "ext4", Mkfs: []string{"mkfs.ext4", "-q", "-F", "-O", "quota,project"}, Opts: "prjquota"}
	// Ext4Plain: ext4 without the project feature.
	Ext4Plain = FS{Name: "ext4", Mkfs: []string{"mkfs.ext4", "-q", "-F"}}
)

// FS says how to make and mount one test filesystem.
type FS struct {
	Name string
	Mkfs []string // command and flags; the image path is appended
	Opts string   // mount options besides loop
}

// MountFS makes fs on a sparse file of size bytes in a fresh temporary directory,
// loop-mounts it and returns the mount point. Cleanup unmounts it (lazily when busy,
// after unmounting anything mounted beneath it) so the loop device, attached with
// autoclear by mount -o loop, goes away, also when the test fails.
func MountFS(t testing.TB, fs FS, size int64) string {
	t.Helper()
	RequireRoot(t)
	dir := ShortTempDir(t)
	img, mnt := filepath.Join(dir, fs.Name+".img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	Run(t, append(fs.Mkfs, img)...)
	opts := "loop"
	if fs.Opts != "" {
		opts += "," + fs.Opts
	}
	Run(t, "mount", "-o", opts, img, mnt)
	t.Cleanup(func() { UnmountTree(t, mnt) })
	return mnt
}

// SharedDir returns a fresh directory <base>/shared that is a mount point (a bind of
// itself), as a shared pool without a source must be: a shared pool on the local
// disk, which several engines of one test use as hosts use a distributed
// filesystem. Cleanup unmounts everything below base, where the caller may put the
// nodes' kubelet directories.
func SharedDir(t testing.TB) (base, shared string) {
	t.Helper()
	RequireRoot(t)
	base = ShortTempDir(t)
	t.Cleanup(func() { UnmountTree(t, base) })
	shared = filepath.Join(base, "shared")
	if err := os.Mkdir(shared, 0o700); err != nil {
		t.Fatal(err)
	}
	Run(t, "mount", "--bind", shared, shared)
	return base, shared
}

// UnmountTree unmounts everything at or below dir, deepest first.
func UnmountTree(t testing.TB, dir string) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Error(err)
		return
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			points = append(points, f[4])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		for try := 0; ; try++ {
			out, err := exec.Command("umount", points[i]).CombinedOutput()
			if err == nil || strings.Contains(string(out), "not mounted") {
				break
			}
			if try == 20 {
				_ = exec.Command("umount", "-l", points[i]).Run()
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// Run runs a command and fails the test with its output when it fails.
func Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// RequireQuotaKernel skips a test that needs project quotas when the running kernel
// was built without quota support: no filesystem can enforce them there. It probes
// for real, by mounting a small XFS with prjquota.
func RequireQuotaKernel(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	if reason := quotaUnsupported(); reason != "" {
		t.Skip("project quotas cannot be enforced on this machine: " + reason)
	}
}

func quotaUnsupported() string {
	dir, err := os.MkdirTemp("", "berth-qprobe")
	if err != nil {
		return err.Error()
	}
	defer os.RemoveAll(dir)
	img, mnt := filepath.Join(dir, "x.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return err.Error()
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		return err.Error()
	}
	if err := os.Truncate(img, 320<<20); err != nil {
		return err.Error()
	}
	if out, err := exec.Command("mkfs.xfs", "-q", "-f", img).CombinedOutput(); err != nil {
		return "mkfs.xfs: " + string(out)
	}
	if out, err := exec.Command("mount", "-o", "loop,prjquota", img, mnt).CombinedOutput(); err != nil {
		return "the kernel refuses to mount XFS with prjquota (built without CONFIG_XFS_QUOTA / CONFIG_QUOTA): " + strings.TrimSpace(string(out))
	}
	_ = exec.Command("umount", mnt).Run()
	return ""
}
