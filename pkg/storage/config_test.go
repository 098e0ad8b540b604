package storage_test

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
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
	want := []storage.PoolConfig{{Name: "default", Path: storage.DefaultPoolPath, Kind: storage.KindDir}}
	if !reflect.DeepEqual(cfg.Pools, want) {
		t.Fatalf("DefaultConfig pools = %+v, want %+v", cfg.Pools, want)
	}
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	_, err := storage.New(storage.Config{})
	checkErr(t, err, storage.ErrInvalid)
}
