package podcgroup_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/berth-csi/berth/pkg/storage/podcgroup"
)

const uid = "3c2b1a09-8f7e-4d6c-b5a4-93827161f0e1"

// mkdirs makes the directories, relative to a fresh root, and returns the root.
func mkdirs(t *testing.T, dirs ...string) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// TestFind: a pod's cgroup is found by UID under kubelet's cgroupfs and systemd
// layouts (a plain directory tree stands for the hierarchy: Find only reads it);
// none is ErrNoPod; two are refused; a UID that is no UID never reaches a path.
func TestFind(t *testing.T) {
	for _, tc := range []struct {
		name    string
		dirs    []string
		want    string
		wantErr error
	}{
		{name: "cgroupfs", dirs: []string{"kubepods/besteffort/pod" + uid + "/c1", "kubepods/burstable/podother"}, want: "kubepods/besteffort/pod" + uid},
		{name: "systemd", dirs: []string{"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3c2b1a09_8f7e_4d6c_b5a4_93827161f0e1.slice/cri-containerd-1.scope"},
			want: "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3c2b1a09_8f7e_4d6c_b5a4_93827161f0e1.slice"},
		{name: "no pod", dirs: []string{"kubepods/besteffort"}, wantErr: podcgroup.ErrNoPod},
		{name: "two cgroups", dirs: []string{"a/pod" + uid, "b/pod" + uid}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := mkdirs(t, tc.dirs...)
			got, err := podcgroup.Find(root, uid)
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Find = %q, %v; want %v", got, err, tc.wantErr)
				}
			case tc.want == "":
				if err == nil {
					t.Fatalf("Find = %q, want an error", got)
				}
			case err != nil || got != filepath.Join(root, tc.want):
				t.Fatalf("Find = %q, %v; want %s", got, err, tc.want)
			}
		})
	}
	if _, err := podcgroup.Find(t.TempDir(), "../etc"); err == nil || errors.Is(err, podcgroup.ErrNoPod) {
		t.Fatalf("Find of a UID that is no UID: %v", err)
	}
}

func TestBelow(t *testing.T) {
	top := "/sys/fs/cgroup/blkio"
	for dir, ok := range map[string]bool{
		top + "/kubepods/pod1": true, top: false, "/sys/fs/cgroup": false,
		top + "/../memory/x": false, "kubepods/pod1": false,
	} {
		if err := podcgroup.Below(top, dir); (err == nil) != ok {
			t.Errorf("Below(%s) = %v, want ok %v", dir, err, ok)
		}
	}
}

// TestHierarchy: v2 where the root holds cgroup.controllers, else the v1
// controller's directory, else an error naming the controller.
func TestHierarchy(t *testing.T) {
	v1 := mkdirs(t, "blkio")
	if err := os.WriteFile(filepath.Join(v1, "blkio", "cgroup.procs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if dir, v2, err := podcgroup.Hierarchy(v1, "blkio"); err != nil || v2 || dir != filepath.Join(v1, "blkio") {
		t.Errorf("v1: %s %v %v", dir, v2, err)
	}
	if _, _, err := podcgroup.Hierarchy(v1, "freezer"); err == nil {
		t.Error("a v1 root without freezer has a freezer hierarchy")
	}
	v2root := t.TempDir()
	if err := os.WriteFile(filepath.Join(v2root, "cgroup.controllers"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if dir, v2, err := podcgroup.Hierarchy(v2root, "blkio"); err != nil || !v2 || dir != v2root {
		t.Errorf("v2: %s %v %v", dir, v2, err)
	}
}
