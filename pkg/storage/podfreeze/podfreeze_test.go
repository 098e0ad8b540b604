package podfreeze_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage/podfreeze"
)

const uid = "0f2c6a1e-4b7d-4e55-9a3c-2d1f0e8b7c6a"

// growing starts a shell in the pod's container cgroup that appends to a file
// without pause, and returns the file.
func growing(t *testing.T, c *testutil.Cgroups, container string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	c.Start(t, container, exec.Command("sh", "-c", `read go; while :; do echo x >> "$0"; done`, out))
	testutil.WaitGrows(t, out, true)
	return out
}

// TestFreezePod finds a pod's cgroup by UID in each hierarchy the machine has and
// freezes it for real: its writer stops, and runs again after Thaw.
func TestFreezePod(t *testing.T) {
	for _, v := range testutil.RequireCgroupVersions(t) {
		t.Run(v, func(t *testing.T) {
			c := testutil.MakeCgroups(t, v)
			container := c.Pod(t, uid)
			out := growing(t, c, container)
			f := podfreeze.New(c.Root)
			dir, err := f.Find(uid)
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Dir(container); dir != filepath.Join(c.Dir, strings.TrimPrefix(want, c.Dir)) {
				t.Fatalf("Find = %s, want %s", dir, want)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			was, err := f.Freeze(ctx, dir)
			if err != nil || was {
				t.Fatalf("Freeze = %v, %v; want false, nil", was, err)
			}
			if frozen, err := f.Frozen(dir); err != nil || !frozen {
				t.Fatalf("Frozen after Freeze = %v, %v", frozen, err)
			}
			testutil.WaitGrows(t, out, false)
			// A second freeze finds the first: its caller must not thaw.
			if was, err := f.Freeze(ctx, dir); err != nil || !was {
				t.Fatalf("second Freeze = %v, %v; want true, nil", was, err)
			}
			if err := f.Thaw(dir); err != nil {
				t.Fatal(err)
			}
			testutil.WaitGrows(t, out, true)
		})
	}
}

// TestFindSystemdLayout finds pods as the systemd cgroup driver names them, and
// reports a pod without a cgroup with ErrNoPod.
func TestFindSystemdLayout(t *testing.T) {
	c := testutil.MakeCgroups(t, testutil.RequireCgroupVersions(t)[0])
	want := filepath.Join(c.Dir, "kubepods.slice", "kubepods-burstable.slice", "kubepods-burstable-pod"+strings.ReplaceAll(uid, "-", "_")+".slice")
	if err := os.MkdirAll(filepath.Join(want, "cri-containerd-abc.scope"), 0o755); err != nil {
		t.Fatal(err)
	}
	f := podfreeze.New(c.Root)
	if got, err := f.Find(uid); err != nil || got != want {
		t.Fatalf("Find = %s, %v; want %s", got, err, want)
	}
	if _, err := f.Find("11111111-2222-3333-4444-555555555555"); !errors.Is(err, podfreeze.ErrNoPod) {
		t.Fatalf("Find of an unknown pod = %v, want ErrNoPod", err)
	}
}

// TestRefusesOutside: a UID that is not one never reaches a path, and Freeze and
// Thaw never write outside the hierarchy, whatever path a record hands them.
func TestRefusesOutside(t *testing.T) {
	f := podfreeze.New(t.TempDir()) // no hierarchy at all
	if _, err := f.Find("../../etc"); err == nil {
		t.Fatal("Find accepted a UID with a path in it")
	}
	versions := testutil.CgroupVersions()
	if len(versions) == 0 {
		return
	}
	c := testutil.MakeCgroups(t, versions[0])
	f = podfreeze.New(c.Root)
	for _, dir := range []string{c.Dir, filepath.Dir(c.Dir), "/tmp", c.Dir + "/../x", "relative/pod"} {
		if _, err := f.Freeze(context.Background(), dir); err == nil {
			t.Errorf("Freeze(%s) accepted a path that is not a cgroup below %s", dir, c.Dir)
		}
		if err := f.Thaw(dir); err == nil {
			t.Errorf("Thaw(%s) accepted a path that is not a cgroup below %s", dir, c.Dir)
		}
	}
}

func TestValidUID(t *testing.T) {
	for uid, want := range map[string]bool{
		"0f2c6a1e-4b7d-4e55-9a3c-2d1f0e8b7c6a": true,
		"6b0e4b3bd5a2a5f3c1e7d9f0a1b2c3d4":     true, // a static pod's hash
		"":                                     false,
		"-abc":                                 false,
		"ABC":                                  false,
		"a/b":                                  false,
		"..":                                   false,
	} {
		if got := podfreeze.ValidUID(uid); got != want {
			t.Errorf("ValidUID(%q) = %v, want %v", uid, got, want)
		}
	}
}
