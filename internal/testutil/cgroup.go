package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Cgroups is a cgroup subtree of the test's own, on the machine's real cgroup
// filesystem, laid out as kubelet lays out pods so that podfreeze finds them there.
type Cgroups struct {
	// Root is what a podfreeze.Freezer is given: a v2 hierarchy's directory, or a
	// directory holding "freezer", a link to a v1 freezer cgroup.
	Root string
	// Dir is where pods' cgroups are made (the hierarchy's directory).
	Dir string
	V2  bool

	enable string // a v2 controller to enable down to the pods' cgroups ("+io")
}

// CgroupVersions are the hierarchies a test can freeze cgroups in on this machine.
func CgroupVersions() []string {
	var out []string
	if v2Mount() != "" {
		out = append(out, "v2")
	}
	if _, err := os.Stat("/sys/fs/cgroup/freezer/cgroup.procs"); err == nil {
		out = append(out, "v1")
	}
	return out
}

// RequireCgroupVersions returns CgroupVersions, or skips the test (root first:
// RequireRoot's rules) when the machine has none.
func RequireCgroupVersions(t testing.TB) []string {
	t.Helper()
	RequireRoot(t)
	versions := CgroupVersions()
	if len(versions) == 0 {
		t.Skip("no cgroup hierarchy with a freezer on this machine")
	}
	return versions
}

// v2Mount is where this machine mounts the cgroup v2 hierarchy ("" when nowhere).
func v2Mount() string {
	for _, d := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if _, err := os.Stat(filepath.Join(d, "cgroup.controllers")); err == nil {
			return d
		}
	}
	return ""
}

// MakeCgroups makes a fresh cgroup subtree ("v2" or "v1", as CgroupVersions names
// them) for the test. Cleanup kills every process still in it and removes it, also
// when the test fails; a test that cannot make one (no such hierarchy, no right to
// write it) is skipped, saying why.
func MakeCgroups(t testing.TB, version string) *Cgroups {
	t.Helper()
	return MakeCgroupsOf(t, version, "freezer", "")
}

// MakeCgroupsOf is MakeCgroups in the hierarchy of the v1 controller (v1), or (v2)
// with the v2 controller v2Controller enabled down to the pods' cgroups ("" for
// none): Root then holds a link named v1Controller to the v1 cgroup made. A
// machine without that controller skips the test.
func MakeCgroupsOf(t testing.TB, version, v1Controller, v2Controller string) *Cgroups {
	t.Helper()
	RequireRoot(t)
	parent := v2Mount()
	if version == "v1" {
		parent = "/sys/fs/cgroup/" + v1Controller
	}
	if _, err := os.Stat(filepath.Join(parent, "cgroup.procs")); parent == "" || err != nil {
		t.Skipf("no cgroup %s hierarchy with a %s controller on this machine", version, v1Controller)
	}
	if version == "v2" && v2Controller != "" {
		data, _ := os.ReadFile(filepath.Join(parent, "cgroup.subtree_control"))
		if !slices.Contains(strings.Fields(string(data)), v2Controller) {
			t.Skipf("the cgroup v2 hierarchy at %s does not enable the %s controller", parent, v2Controller)
		}
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	dir := filepath.Join(parent, "berth-test-"+hex.EncodeToString(b))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot make a cgroup in %s: %v", parent, err)
	}
	t.Cleanup(func() { removeCgroups(t, dir) })
	c := &Cgroups{Root: dir, Dir: dir, V2: version == "v2"}
	if c.V2 && v2Controller != "" {
		c.enable = "+" + v2Controller
	}
	if !c.V2 {
		c.Root = t.TempDir()
		if err := os.Symlink(dir, filepath.Join(c.Root, v1Controller)); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// Pod makes the cgroups kubelet's cgroupfs driver gives a pod of QoS class
// besteffort, kubepods/besteffort/pod<uid>, and one container in it; it returns
// the container's cgroup, where a test puts the pod's processes.
func (c *Cgroups) Pod(t testing.TB, uid string) string {
	t.Helper()
	container := filepath.Join(c.Dir, "kubepods", "besteffort", "pod"+uid, "container")
	if err := os.MkdirAll(container, 0o755); err != nil {
		t.Fatal(err)
	}
	if c.enable != "" {
		for _, d := range []string{c.Dir, filepath.Join(c.Dir, "kubepods"), filepath.Join(c.Dir, "kubepods", "besteffort"), filepath.Dir(container)} {
			if err := os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte(c.enable), 0); err != nil {
				t.Fatalf("enable %s in %s: %v", c.enable, d, err)
			}
		}
	}
	return container
}

// Enter moves the process pid into the cgroup dir.
func (c *Cgroups) Enter(t testing.TB, dir string, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		t.Fatalf("move process %d into %s: %v", pid, dir, err)
	}
}

// Start starts cmd, a process that waits for a line on its standard input before
// it does anything, moves it into the cgroup dir, then sends the line. Cleanup
// kills it (by its PID) and waits for it.
func (c *Cgroups) Start(t testing.TB, dir string, cmd *exec.Cmd) {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	c.Enter(t, dir, cmd.Process.Pid)
	if _, err := stdin.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
}

// WaitGrows checks that the file at path grows within 10 s (its writer runs) or,
// with grows false, that it does not over 200 ms (its writer is paused).
func WaitGrows(t testing.TB, path string, grows bool) {
	t.Helper()
	size := func() int64 {
		fi, err := os.Stat(path)
		if err != nil {
			return 0
		}
		return fi.Size()
	}
	before := size()
	wait := 10 * time.Second
	if !grows {
		wait = 200 * time.Millisecond
	}
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if now := size(); now != before {
			if !grows {
				t.Fatalf("%s grew from %d to %d bytes while its writer was paused", path, before, now)
			}
			return
		}
	}
	if grows {
		t.Fatalf("%s does not grow: its writer does not run (left paused?)", path)
	}
}

// removeCgroups thaws dir's subtree, kills what still runs in it and removes its
// cgroups, deepest first.
func removeCgroups(t testing.TB, dir string) {
	var dirs []string
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	for _, d := range dirs {
		_ = os.WriteFile(filepath.Join(d, "cgroup.freeze"), []byte("0"), 0)
		_ = os.WriteFile(filepath.Join(d, "freezer.state"), []byte("THAWED"), 0)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		for range 100 {
			data, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			pids := strings.Fields(string(data))
			if len(pids) == 0 {
				break
			}
			for _, p := range pids {
				if pid, err := strconv.Atoi(p); err == nil {
					if proc, err := os.FindProcess(pid); err == nil {
						_ = proc.Kill()
					}
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := os.Remove(d); err != nil {
			t.Errorf("remove test cgroup %s: %v", d, err)
		}
	}
}
