package storage_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
	"sigs.k8s.io/yaml"
)

func TestLoadConfig(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr error
		want    []storage.PoolConfig // checked when wantErr is nil
	}{
		{
			name: "several pools",
			yaml: `
pools:
- name: default
  path: /var/lib/berth/default
  kind: dir
- name: fast-ssd
  path: /mnt/ssd/berth
  kind: dir
  reservedBytes: 1073741824
  overcommit: true
- name: a
  path: /var/lib/berth/defaults
  kind: dir
`,
			want: []storage.PoolConfig{
				{Name: "default", Path: "/var/lib/berth/default", Kind: "dir"},
				{Name: "fast-ssd", Path: "/mnt/ssd/berth", Kind: "dir", ReservedBytes: 1 << 30, Overcommit: true},
				{Name: "a", Path: "/var/lib/berth/defaults", Kind: "dir"},
			},
		},
		{
			name:    "unknown top-level key",
			yaml:    "pools:\n- {name: a, path: /srv/a, kind: dir}\npool: []\n",
			wantErr: errAny,
		},
		{
			name:    "unknown pool key",
			yaml:    "pools:\n- {name: a, path: /srv/a, kind: dir, reserved: 10}\n",
			wantErr: errAny,
		},
		{
			name:    "misspelt key",
			yaml:    "pools:\n- {name: a, path: /srv/a, kind: dir, overcomit: true}\n",
			wantErr: errAny,
		},
		{
			name:    "syntax error",
			yaml:    "pools: [\n",
			wantErr: errAny,
		},
		{
			name:    "wrong type",
			yaml:    "pools:\n- {name: a, path: /srv/a, kind: dir, reservedBytes: lots}\n",
			wantErr: errAny,
		},
		{
			name:    "unknown kind",
			yaml:    "pools:\n- {name: a, path: /srv/a, kind: zfs}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "missing kind",
			yaml:    "pools:\n- {name: a, path: /srv/a}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "bad pool name",
			yaml:    "pools:\n- {name: Fast, path: /srv/a, kind: dir}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "duplicate names",
			yaml:    "pools:\n- {name: a, path: /srv/a, kind: dir}\n- {name: a, path: /srv/b, kind: dir}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "same path",
			yaml:    "pools:\n- {name: a, path: /srv/a, kind: dir}\n- {name: b, path: /srv/a, kind: dir}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "second pool inside first",
			yaml:    "pools:\n- {name: a, path: /srv/a, kind: dir}\n- {name: b, path: /srv/a/b, kind: dir}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "first pool inside second",
			yaml:    "pools:\n- {name: a, path: /srv/a/b, kind: dir}\n- {name: b, path: /srv/a, kind: dir}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "nested two entries apart",
			yaml:    "pools:\n- {name: a, path: /srv, kind: dir}\n- {name: b, path: /opt, kind: dir}\n- {name: c, path: /srv/x/y, kind: dir}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "relative path",
			yaml:    "pools:\n- {name: a, path: srv/a, kind: dir}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "root path",
			yaml:    "pools:\n- {name: a, path: /, kind: dir}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "unclean path",
			yaml:    "pools:\n- {name: a, path: /srv/../etc, kind: dir}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "trailing slash",
			yaml:    "pools:\n- {name: a, path: /srv/a/, kind: dir}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "empty path",
			yaml:    "pools:\n- {name: a, kind: dir}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "negative reservedBytes",
			yaml:    "pools:\n- {name: a, path: /srv/a, kind: dir, reservedBytes: -1}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name: "inline ephemeral policy",
			yaml: `
pools:
- {name: a, path: /srv/a, kind: dir, ephemeral: {allowed: true, maxSize: 256Mi}}
- {name: q, path: /srv/q, kind: quota, ephemeral: {allowed: true}}
- {name: b, path: /srv/b, kind: dir}
`,
			want: []storage.PoolConfig{
				{Name: "a", Path: "/srv/a", Kind: "dir", Ephemeral: storage.EphemeralConfig{Allowed: true, MaxSize: "256Mi"}},
				{Name: "q", Path: "/srv/q", Kind: "quota", Ephemeral: storage.EphemeralConfig{Allowed: true}},
				{Name: "b", Path: "/srv/b", Kind: "dir"},
			},
		},
		{
			name:    "ephemeral maxSize without allowed",
			yaml:    "pools:\n- {name: a, path: /srv/a, kind: dir, ephemeral: {maxSize: 1Gi}}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "ephemeral maxSize not a quantity",
			yaml:    "pools:\n- {name: a, path: /srv/a, kind: dir, ephemeral: {allowed: true, maxSize: lots}}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "ephemeral maxSize zero",
			yaml:    "pools:\n- {name: a, path: /srv/a, kind: dir, ephemeral: {allowed: true, maxSize: '0'}}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "ephemeral misspelt key",
			yaml:    "pools:\n- {name: a, path: /srv/a, kind: dir, ephemeral: {allowed: true, max: 1Gi}}\n",
			wantErr: errAny,
		},
		{
			name:    "ephemeral on an image pool",
			yaml:    "pools:\n- {name: a, path: /srv/a, kind: image, ephemeral: {allowed: true}}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "ephemeral on a shared pool",
			yaml:    "pools:\n- {name: a, path: /srv/a, kind: shared, ephemeral: {allowed: true}}\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "empty pools list",
			yaml:    "pools: []\n",
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "empty file",
			yaml:    "\n",
			wantErr: storage.ErrInvalid,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := storage.LoadConfig(path)
			checkErr(t, err, tc.wantErr)
			if tc.wantErr == nil && !reflect.DeepEqual(cfg.Pools, tc.want) {
				t.Fatalf("pools = %+v, want %+v", cfg.Pools, tc.want)
			}
		})
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	_, err := storage.LoadConfig(filepath.Join(t.TempDir(), "absent.yaml"))
	checkErr(t, err, os.ErrNotExist)
}

func TestDefaultConfig(t *testing.T) {
	cfg := storage.DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("DefaultConfig does not validate: %v", err)
	}
	// The embedded pool takes inline ephemeral volumes (of the default maximum), so
	// `make run` and the demo keep working without a configuration.
	want := []storage.PoolConfig{{Name: "default", Path: storage.DefaultPoolPath, Kind: storage.KindAuto,
		Ephemeral: storage.EphemeralConfig{Allowed: true}}}
	if !reflect.DeepEqual(cfg.Pools, want) {
		t.Fatalf("DefaultConfig pools = %+v, want %+v", cfg.Pools, want)
	}
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	_, err := storage.New(storage.Config{})
	checkErr(t, err, storage.ErrInvalid)
}

// FuzzLoadConfig: a configuration LoadConfig accepts is one Berth can serve safely:
// valid unique pool names, clean absolute paths of which none holds another or an
// adopt root, known kinds, shared-pool keys only on shared pools, mount options that
// are one -o item each; and it survives a write and a re-read unchanged.
func FuzzLoadConfig(f *testing.F) {
	for _, s := range []string{
		"pools:\n- name: default\n  path: /var/lib/berth/default\n  kind: dir\n",
		"pools:\n- {name: a, path: /srv/a, kind: dir}\n- {name: b, path: /srv/ab, kind: quota, reservedBytes: 1024, overcommit: true}\n",
		"pools:\n- {name: a, path: /srv/a, kind: dir}\n- {name: b, path: /srv/a/b, kind: dir}\n",
		"pools:\n- {name: img, path: /srv/img, kind: image}\nadoptRoots: [/data, /srv/adopt]\n",
		"pools:\n- {name: a, path: /srv/a, kind: dir}\nadoptRoots: [/srv]\n",
		"pools:\n- {name: a, path: /srv/a, kind: dir}\nadoptRoots: [/data, {path: /mnt, allowCrossMounts: true}, {path: /opt}]\n",
		"pools:\n- {name: g, path: /mnt/g, kind: shared, source: '127.0.0.1:/gv0/sub', fsType: glusterfs, mountOptions: [log-level=WARNING], glusterQuota: true}\n",
		"pools:\n- {name: n, path: /mnt/n, kind: shared, source: 'nfs:/export', fsType: nfs4, mountOptions: ['vers=4.2']}\n",
		"pools:\n- {name: n, path: /mnt/n, kind: dir, source: 'nfs:/export'}\n",
		"pools:\n- {name: a, path: /srv/a, kind: dir}\npools: []\n",
		`{"pools": [{"name": "a", "path": "/srv/a", "kind": "dir"}]}`,
		"pools: [\n", "", "\n",
	} {
		f.Add([]byte(s))
	}
	path := filepath.Join(f.TempDir(), "config.yaml")
	load := func(t *testing.T, data []byte) (storage.Config, error) {
		t.Helper()
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return storage.LoadConfig(path)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := load(t, data)
		if err != nil {
			return
		}
		checkConfig(t, cfg)
		out, err := yaml.Marshal(cfg)
		if err != nil {
			t.Fatalf("marshal %+v: %v", cfg, err)
		}
		again, err := load(t, out)
		if err != nil {
			t.Fatalf("config %+v, written as\n%s\ndoes not load again: %v", cfg, out, err)
		}
		if a, b := mustJSON(t, cfg), mustJSON(t, again); a != b {
			t.Fatalf("config changed through a write and a re-read:\n%s\n%s", a, b)
		}
	})
}

// checkConfig fails t unless cfg has the properties a validated config promises.
func checkConfig(t *testing.T, cfg storage.Config) {
	t.Helper()
	// within reports whether clean absolute path b is a or lies under it.
	within := func(a, b string) bool { return strings.HasPrefix(b+"/", a+"/") }
	cleanAbs := func(p string) bool { return filepath.IsAbs(p) && filepath.Clean(p) == p && p != "/" }
	if len(cfg.Pools) == 0 {
		t.Fatal("a config without pools is accepted")
	}
	for _, root := range cfg.AdoptRoots {
		if !cleanAbs(root.Path) {
			t.Fatalf("adopt root %q accepted", root.Path)
		}
	}
	names := map[string]bool{}
	for i, p := range cfg.Pools {
		if err := storage.ValidatePoolName(p.Name); err != nil || names[p.Name] {
			t.Fatalf("pools[%d]: name %q accepted (duplicate: %t): %v", i, p.Name, names[p.Name], err)
		}
		names[p.Name] = true
		if !cleanAbs(p.Path) {
			t.Fatalf("pools[%d]: path %q accepted", i, p.Path)
		}
		for j, q := range cfg.Pools[:i] {
			if within(p.Path, q.Path) || within(q.Path, p.Path) {
				t.Fatalf("pools[%d] at %s and pools[%d] at %s overlap", j, q.Path, i, p.Path)
			}
		}
		for _, root := range cfg.AdoptRoots {
			if within(p.Path, root.Path) || within(root.Path, p.Path) {
				t.Fatalf("pools[%d] at %s overlaps adopt root %s", i, p.Path, root.Path)
			}
		}
		if !slices.Contains([]string{storage.KindDir, storage.KindQuota, storage.KindImage, storage.KindShared, storage.KindAuto}, p.Kind) {
			t.Fatalf("pools[%d]: kind %q accepted", i, p.Kind)
		}
		if p.ReservedBytes < 0 {
			t.Fatalf("pools[%d]: reservedBytes %d accepted", i, p.ReservedBytes)
		}
		if p.Kind != storage.KindShared && (p.Source != "" || p.FSType != "" || len(p.MountOptions) > 0 || p.GlusterQuota) {
			t.Fatalf("pools[%d]: shared-pool keys accepted on kind %s: %+v", i, p.Kind, p)
		}
		if strings.ContainsAny(p.Source, " \t\n,\x00") || strings.HasPrefix(p.Source, "-") {
			t.Fatalf("pools[%d]: source %q accepted", i, p.Source)
		}
		for _, o := range p.MountOptions {
			if o == "" || strings.ContainsAny(o, ", \t\n\x00") {
				t.Fatalf("pools[%d]: mount option %q accepted", i, o)
			}
		}
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
