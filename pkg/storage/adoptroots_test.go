package storage_test

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
	"sigs.k8s.io/yaml"
)

// TestAdoptRootsForms: adoptRoots accepts the original plain paths and entries with
// options, mixed, refuses unknown option keys, and writes a root back in the form it
// needs (plain when it has no option), so old configuration files load unchanged.
func TestAdoptRootsForms(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		want    []storage.AdoptRoot
		wantErr error
	}{
		{name: "plain paths (the original form)", yaml: "adoptRoots: [/srv, /data]\n",
			want: []storage.AdoptRoot{{Path: "/srv"}, {Path: "/data"}}},
		{name: "block list of plain paths", yaml: "adoptRoots:\n- /srv\n",
			want: []storage.AdoptRoot{{Path: "/srv"}}},
		{name: "entries with options", yaml: "adoptRoots:\n- path: /srv\n  allowCrossMounts: true\n- {path: /data}\n",
			want: []storage.AdoptRoot{{Path: "/srv", AllowCrossMounts: true}, {Path: "/data"}}},
		{name: "mixed", yaml: "adoptRoots: [/data, {path: /srv, allowCrossMounts: true}]\n",
			want: []storage.AdoptRoot{{Path: "/data"}, {Path: "/srv", AllowCrossMounts: true}}},
		{name: "unknown option", yaml: "adoptRoots: [{path: /srv, allowCrossMount: true}]\n", wantErr: errAny},
		{name: "not a path", yaml: "adoptRoots: [[/srv]]\n", wantErr: errAny},
		{name: "relative path in an entry", yaml: "adoptRoots: [{path: srv}]\n", wantErr: storage.ErrInvalid},
		{name: "root / in an entry", yaml: "adoptRoots: [{path: /, allowCrossMounts: true}]\n", wantErr: storage.ErrInvalid},
		{name: "entry over a pool", yaml: "adoptRoots: [{path: /var/lib/berth/a/x}]\n", wantErr: storage.ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			data := "pools:\n- {name: a, path: /var/lib/berth/a, kind: dir}\n" + tc.yaml
			if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := storage.LoadConfig(path)
			checkErr(t, err, tc.wantErr)
			if tc.wantErr != nil {
				return
			}
			if !reflect.DeepEqual(cfg.AdoptRoots, tc.want) {
				t.Fatalf("adoptRoots = %+v, want %+v", cfg.AdoptRoots, tc.want)
			}
			out, err := yaml.Marshal(cfg)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range tc.want {
				if !r.AllowCrossMounts && !strings.Contains(string(out), "- "+r.Path+"\n") {
					t.Errorf("root %s without options not written as a plain path:\n%s", r.Path, out)
				}
			}
			if err := os.WriteFile(path, out, 0o600); err != nil {
				t.Fatal(err)
			}
			again, err := storage.LoadConfig(path)
			if err != nil || !reflect.DeepEqual(again.AdoptRoots, tc.want) {
				t.Fatalf("written back as\n%s\nreads %+v, %v", out, again.AdoptRoots, err)
			}
		})
	}
}

// TestCheckAdoptRoots: a root that is, contains or lies inside the kubelet
// directory, a pool or the driver's socket is refused at start-up with the conflict
// named, also when a symlink hides it; a neighbour sharing a name prefix is not.
func TestCheckAdoptRoots(t *testing.T) {
	base := t.TempDir()
	kubelet := filepath.Join(base, "var", "lib", "kubelet")
	pool := filepath.Join(base, "var", "lib", "berth", "default") // not created: pools are made at start-up
	sock := filepath.Join(base, "plugins", "berth", "csi.sock")
	for _, d := range []string{kubelet, filepath.Join(base, "var", "lib", "kube"), filepath.Dir(sock), filepath.Join(base, "srv", "data")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A symlinked path to the kubelet directory, as some distributions have.
	if err := os.Symlink(filepath.Join(base, "var", "lib"), filepath.Join(base, "varlib")); err != nil {
		t.Fatal(err)
	}
	reserved := []storage.ReservedDir{
		{What: "the kubelet directory (--kubelet-dir)", Path: kubelet},
		{What: "the driver's socket (--endpoint)", Path: sock},
	}
	tests := []struct {
		name     string
		root     string
		wantErr  error
		wantText string // part of the message naming the conflict
	}{
		{name: "unrelated", root: filepath.Join(base, "srv")},
		{name: "name prefix of the kubelet dir", root: filepath.Join(base, "var", "lib", "kube")},
		{name: "name prefix of the kubelet dir, resolved", root: filepath.Join(base, "varlib", "kube")},
		{name: "missing root", root: filepath.Join(base, "nowhere")},
		{name: "is the kubelet dir", root: kubelet, wantErr: storage.ErrInvalid, wantText: "is the kubelet directory"},
		{name: "contains the kubelet dir (/var)", root: filepath.Join(base, "var"), wantErr: storage.ErrInvalid, wantText: "contains the kubelet directory"},
		{name: "inside the kubelet dir", root: filepath.Join(kubelet, "pods"), wantErr: storage.ErrInvalid, wantText: "lies inside the kubelet directory"},
		{name: "kubelet dir through a symlink", root: filepath.Join(base, "varlib", "kubelet"), wantErr: storage.ErrInvalid, wantText: "is the kubelet directory"},
		{name: "inside the kubelet dir through a symlink", root: filepath.Join(base, "varlib", "kubelet", "pods"), wantErr: storage.ErrInvalid, wantText: "lies inside the kubelet directory"},
		{name: "contains a pool through a symlink", root: filepath.Join(base, "varlib", "berth"), wantErr: storage.ErrInvalid, wantText: `contains pool "default"`},
		{name: "contains the socket", root: filepath.Join(base, "plugins"), wantErr: storage.ErrInvalid, wantText: "contains the driver's socket"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := storage.Config{
				Pools:      []storage.PoolConfig{{Name: "default", Path: pool, Kind: storage.KindDir}},
				AdoptRoots: []storage.AdoptRoot{{Path: tc.root}},
			}
			if err := cfg.Validate(); err != nil && tc.wantErr == nil {
				t.Fatalf("Validate: %v", err)
			}
			err := cfg.CheckAdoptRoots(reserved...)
			checkErr(t, err, tc.wantErr)
			if err != nil && !strings.Contains(err.Error(), tc.wantText) {
				t.Fatalf("error %q does not name the conflict %q", err, tc.wantText)
			}
		})
	}
}
