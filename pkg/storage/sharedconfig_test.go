package storage_test

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
)

// credential is a secret value a configuration must not carry, nor any error show.
const credential = "AQDhunter2hunter2=="

func TestLoadConfigSharedPools(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr error
		want    storage.PoolConfig // checked when wantErr is nil
	}{
		{
			name: "mounted by Berth, with quotas",
			yaml: `
pools:
- name: gl
  path: /var/lib/berth/gl
  kind: shared
  source: 10.0.0.5:/gv0/berth
  fsType: glusterfs
  mountOptions: [backup-volfile-servers=10.0.0.6:10.0.0.7, log-level=WARNING]
  glusterQuota: true
`,
			want: storage.PoolConfig{Name: "gl", Path: "/var/lib/berth/gl", Kind: storage.KindShared, Source: "10.0.0.5:/gv0/berth",
				FSType: "glusterfs", MountOptions: []string{"backup-volfile-servers=10.0.0.6:10.0.0.7", "log-level=WARNING"}, GlusterQuota: true},
		},
		{
			name: "mounted by the operator",
			yaml: "pools:\n- {name: nfs, path: /mnt/nfs/berth, kind: shared}\n",
			want: storage.PoolConfig{Name: "nfs", Path: "/mnt/nfs/berth", Kind: storage.KindShared},
		},
		{
			name: "nfs4 with options",
			yaml: "pools:\n- {name: nfs, path: /mnt/b, kind: shared, source: 'nas:/export/b', fsType: nfs4, mountOptions: [hard, vers=4.2]}\n",
			want: storage.PoolConfig{Name: "nfs", Path: "/mnt/b", Kind: storage.KindShared, Source: "nas:/export/b", FSType: "nfs4", MountOptions: []string{"hard", "vers=4.2"}},
		},
		{name: "source without fsType", yaml: "pools:\n- {name: a, path: /mnt/a, kind: shared, source: 'h:/v'}\n", wantErr: storage.ErrInvalid},
		{name: "fsType without source", yaml: "pools:\n- {name: a, path: /mnt/a, kind: shared, fsType: glusterfs}\n", wantErr: storage.ErrInvalid},
		{name: "unknown fsType", yaml: "pools:\n- {name: a, path: /mnt/a, kind: shared, source: 'h:/v', fsType: ext4}\n", wantErr: storage.ErrInvalid},
		{name: "gluster source without volume", yaml: "pools:\n- {name: a, path: /mnt/a, kind: shared, source: 'h', fsType: glusterfs}\n", wantErr: storage.ErrInvalid},
		{name: "gluster source with ..", yaml: "pools:\n- {name: a, path: /mnt/a, kind: shared, source: 'h:/v/../x', fsType: glusterfs}\n", wantErr: storage.ErrInvalid},
		{name: "source that is an option", yaml: "pools:\n- {name: a, path: /mnt/a, kind: shared, source: '-oremount', fsType: nfs}\n", wantErr: storage.ErrInvalid},
		{name: "source with a space", yaml: "pools:\n- {name: a, path: /mnt/a, kind: shared, source: 'h:/v x', fsType: nfs}\n", wantErr: storage.ErrInvalid},
		{name: "option with a comma", yaml: "pools:\n- {name: a, path: /mnt/a, kind: shared, source: 'h:/v', fsType: nfs, mountOptions: ['ro,suid']}\n", wantErr: storage.ErrInvalid},
		{name: "empty option", yaml: "pools:\n- {name: a, path: /mnt/a, kind: shared, source: 'h:/v', fsType: nfs, mountOptions: ['']}\n", wantErr: storage.ErrInvalid},
		{name: "options without source", yaml: "pools:\n- {name: a, path: /mnt/a, kind: shared, mountOptions: [hard]}\n", wantErr: storage.ErrInvalid},
		{name: "glusterQuota on nfs", yaml: "pools:\n- {name: a, path: /mnt/a, kind: shared, source: 'h:/v', fsType: nfs, glusterQuota: true}\n", wantErr: storage.ErrInvalid},
		{name: "glusterQuota without source", yaml: "pools:\n- {name: a, path: /mnt/a, kind: shared, glusterQuota: true}\n", wantErr: storage.ErrInvalid},
		{name: "shared keys on a dir pool", yaml: "pools:\n- {name: a, path: /mnt/a, kind: dir, source: 'h:/v', fsType: nfs}\n", wantErr: storage.ErrInvalid},
		{name: "glusterQuota on a quota pool", yaml: "pools:\n- {name: a, path: /mnt/a, kind: quota, glusterQuota: true}\n", wantErr: storage.ErrInvalid},
		{
			name: "ceph credentials from a file",
			yaml: "pools:\n- {name: c, path: /mnt/c, kind: shared, source: '10.0.0.1:6789:/', fsType: ceph, mountOptions: [name=berth, secretfile=/etc/berth/secrets/ceph/key]}\n",
			want: storage.PoolConfig{Name: "c", Path: "/mnt/c", Kind: storage.KindShared, Source: "10.0.0.1:6789:/", FSType: "ceph",
				MountOptions: []string{"name=berth", "secretfile=/etc/berth/secrets/ceph/key"}},
		},
		{name: "ceph secret inline", yaml: "pools:\n- {name: c, path: /mnt/c, kind: shared, source: 'm:/', fsType: ceph, mountOptions: [name=berth, 'secret=" + credential + "']}\n", wantErr: storage.ErrInvalid},
		{name: "secret in capitals", yaml: "pools:\n- {name: c, path: /mnt/c, kind: shared, source: 'm:/', fsType: ceph, mountOptions: ['SECRET=" + credential + "']}\n", wantErr: storage.ErrInvalid},
		{name: "password inline", yaml: "pools:\n- {name: n, path: /mnt/n, kind: shared, source: 'h:/v', fsType: nfs, mountOptions: ['password=" + credential + "']}\n", wantErr: storage.ErrInvalid},
		{name: "password with a comma", yaml: "pools:\n- {name: n, path: /mnt/n, kind: shared, source: 'h:/v', fsType: nfs, mountOptions: ['pass=" + credential + ",x']}\n", wantErr: storage.ErrInvalid},
		{name: "secretfile relative", yaml: "pools:\n- {name: c, path: /mnt/c, kind: shared, source: 'm:/', fsType: ceph, mountOptions: [secretfile=key]}\n", wantErr: storage.ErrInvalid},
		{name: "secretfile unclean", yaml: "pools:\n- {name: c, path: /mnt/c, kind: shared, source: 'm:/', fsType: ceph, mountOptions: [secretfile=/etc/../key]}\n", wantErr: storage.ErrInvalid},
		{name: "misspelt shared key", yaml: "pools:\n- {name: a, path: /mnt/a, kind: shared, mountOption: [hard]}\n", wantErr: errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := storage.LoadConfig(path)
			checkErr(t, err, tt.wantErr)
			if err != nil && strings.Contains(err.Error(), credential) {
				t.Errorf("the configuration error shows the credential: %v", err)
			}
			if tt.wantErr == nil && !reflect.DeepEqual(cfg.Pools[0], tt.want) {
				t.Errorf("pool = %+v, want %+v", cfg.Pools[0], tt.want)
			}
		})
	}
}
