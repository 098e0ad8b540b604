package storage

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPrepareTarget covers what a publish finds at and above its target: it creates
// the last component only, accepts one of the right type, and refuses symlinks.
func TestPrepareTarget(t *testing.T) {
	tests := []struct {
		name  string
		rel   string // the target, relative to the kubelet dir
		block bool
		// setup prepares the tree; kubelet is the kubelet dir, outside a directory
		// beside it that nothing may touch.
		setup   func(t *testing.T, kubelet, outside string)
		wantErr error  // nil or ErrPrecondition
		want    string // with no error: "dir" or "file" at the target
	}{
		{name: "new directory", rel: "pods/p/mount", want: "dir"},
		{name: "new file for a block volume", rel: "pods/p/dev", block: true, want: "file"},
		{name: "new directory in the kubelet dir itself", rel: "mount", want: "dir"},
		{name: "directory already there", rel: "pods/p/mount", want: "dir",
			setup: func(t *testing.T, kubelet, _ string) { mkdirAll(t, filepath.Join(kubelet, "pods/p/mount")) }},
		{name: "file already there for a block volume", rel: "pods/p/dev", block: true, want: "file",
			setup: func(t *testing.T, kubelet, _ string) { touchFile(t, filepath.Join(kubelet, "pods/p/dev")) }},
		{name: "directory where a block volume needs a file", rel: "pods/p/dev", block: true, wantErr: ErrPrecondition,
			setup: func(t *testing.T, kubelet, _ string) { mkdirAll(t, filepath.Join(kubelet, "pods/p/dev")) }},
		{name: "file where a mount volume needs a directory", rel: "pods/p/mount", wantErr: ErrPrecondition,
			setup: func(t *testing.T, kubelet, _ string) { touchFile(t, filepath.Join(kubelet, "pods/p/mount")) }},
		{name: "symlink as target", rel: "pods/p/mount", wantErr: ErrPrecondition,
			setup: func(t *testing.T, kubelet, outside string) {
				symlink(t, outside, filepath.Join(kubelet, "pods/p/mount"))
			}},
		{name: "symlink as block target", rel: "pods/p/dev", block: true, wantErr: ErrPrecondition,
			setup: func(t *testing.T, kubelet, outside string) {
				touchFile(t, filepath.Join(outside, "dev"))
				symlink(t, filepath.Join(outside, "dev"), filepath.Join(kubelet, "pods/p/dev"))
			}},
		{name: "symlinked parent", rel: "pods/link/mount", wantErr: ErrPrecondition,
			setup: func(t *testing.T, kubelet, outside string) { symlink(t, outside, filepath.Join(kubelet, "pods/link")) }},
		{name: "symlinked grandparent", rel: "pods/link/p/mount", wantErr: ErrPrecondition,
			setup: func(t *testing.T, kubelet, outside string) {
				mkdirAll(t, filepath.Join(outside, "p"))
				symlink(t, outside, filepath.Join(kubelet, "pods/link"))
			}},
		{name: "parent missing", rel: "pods/missing/mount", wantErr: ErrPrecondition},
		{name: "parent is a file", rel: "pods/file/mount", wantErr: ErrPrecondition,
			setup: func(t *testing.T, kubelet, _ string) { touchFile(t, filepath.Join(kubelet, "pods/file")) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			kubelet, outside := filepath.Join(base, "kubelet"), filepath.Join(base, "outside")
			mkdirAll(t, filepath.Join(kubelet, "pods/p"))
			mkdirAll(t, outside)
			if tc.setup != nil {
				tc.setup(t, kubelet, outside)
			}
			before := dirNames(t, outside)
			n := &Node{kubeletDir: kubelet}
			target := filepath.Join(kubelet, tc.rel)
			err := n.prepareTarget(target, tc.rel, tc.block)
			if (err == nil) != (tc.wantErr == nil) || !errors.Is(err, tc.wantErr) {
				t.Fatalf("prepareTarget: %v, want %v", err, tc.wantErr)
			}
			if after := dirNames(t, outside); after != before {
				t.Errorf("outside the kubelet dir: %q, was %q", after, before)
			}
			if tc.wantErr != nil {
				return
			}
			fi, err := os.Lstat(target)
			if err != nil {
				t.Fatal(err)
			}
			got := "other"
			switch {
			case fi.IsDir():
				got = "dir"
			case fi.Mode().IsRegular():
				got = "file"
			}
			if got != tc.want {
				t.Errorf("target is %v, want a %s", fi.Mode(), tc.want)
			}
		})
	}
}

// TestRemoveTarget checks that unpublish removes only an empty directory or an empty
// file, and never follows a symlink.
func TestRemoveTarget(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(t *testing.T, target, outside string)
		wantGone bool
	}{
		{"empty directory", func(t *testing.T, target, _ string) { mkdirAll(t, target) }, true},
		{"directory with a file", func(t *testing.T, target, _ string) {
			mkdirAll(t, target)
			touchFile(t, filepath.Join(target, "data"))
		}, false},
		{"empty file", func(t *testing.T, target, _ string) { touchFile(t, target) }, true},
		{"file with data", func(t *testing.T, target, _ string) {
			if err := os.WriteFile(target, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"symlink to an empty directory", func(t *testing.T, target, outside string) { symlink(t, outside, target) }, false},
		{"missing", func(*testing.T, string, string) {}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			target, outside := filepath.Join(base, "target"), filepath.Join(base, "outside")
			mkdirAll(t, outside)
			tc.setup(t, target, outside)
			if err := removeTarget(target); err != nil {
				t.Fatalf("removeTarget: %v", err)
			}
			_, err := os.Lstat(target)
			if gone := errors.Is(err, os.ErrNotExist); gone != tc.wantGone {
				t.Errorf("target gone: %t (lstat: %v), want %t", gone, err, tc.wantGone)
			}
			if _, err := os.Stat(outside); err != nil {
				t.Errorf("the directory a symlink points to: %v", err)
			}
		})
	}
}

// dirNames lists a directory's entries, one level deep.
func dirNames(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return strings.Join(names, " ")
}

func mkdirAll(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o750); err != nil {
		t.Fatal(err)
	}
}

func touchFile(t *testing.T, p string) {
	t.Helper()
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, dst, link string) {
	t.Helper()
	if err := os.Symlink(dst, link); err != nil {
		t.Fatal(err)
	}
}
