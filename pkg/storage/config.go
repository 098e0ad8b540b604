package storage

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"sigs.k8s.io/yaml"
)

// Pool kinds. Each kind is one Backend implementation (see kind.go).
const (
	KindDir = "dir"
)

// DefaultPoolPath is where the embedded default pool lives.
const DefaultPoolPath = "/var/lib/berth/default"

// PoolConfig is one entry of the --config file's `pools:` list.
type PoolConfig struct {
	// Name selects the pool from a StorageClass (`parameters.pool`) and appears in IDs.
	Name string `json:"name"`
	// Path is the absolute host directory that holds the pool.
	Path string `json:"path"`
	// Kind chooses the backend: dir, quota, image, shared, or auto (quota where the
	// filesystem enforces project quotas, else dir; chosen once per pool).
	Kind string `json:"kind"`
	// ReservedBytes of the filesystem are never handed to volumes.
	ReservedBytes int64 `json:"reservedBytes,omitempty"`
	// Overcommit lets the sum of volume capacities exceed the pool's size.
	Overcommit bool `json:"overcommit,omitempty"`

	// The keys below are for shared pools only (see sharedkind.go).

	// Source is the distributed filesystem to mount at Path (e.g. 127.0.0.1:/gv0).
	// Empty: the operator mounts it at Path on every host.
	Source string `json:"source,omitempty"`
	// FSType is Source's filesystem type for mount(8): glusterfs, nfs, nfs4 or ceph.
	FSType string `json:"fsType,omitempty"`
	// MountOptions are passed to mount(8) with -o (nosuid and nodev are always added).
	MountOptions []string `json:"mountOptions,omitempty"`
	// GlusterQuota enforces volume sizes with GlusterFS directory quotas.
	GlusterQuota bool `json:"glusterQuota,omitempty"`
}

// Config is the whole --config file.
type Config struct {
	Pools []PoolConfig `json:"pools"`
	// AdoptRoots are the host directories under which existing directories may be
	// adopted as static volumes. None by default.
	AdoptRoots []string `json:"adoptRoots,omitempty"`
}

// DefaultConfig is used when no --config is given: one pool named "default" of kind
// auto, which enforces volume sizes where the filesystem under DefaultPoolPath
// enforces project quotas (a quota pool), and says so where it does not (a dir
// pool; autokind.go).
func DefaultConfig() Config {
	return Config{Pools: []PoolConfig{{Name: "default", Path: DefaultPoolPath, Kind: KindAuto}}}
}

// LoadConfig reads and validates a config file. Unknown keys are errors, so a typo
// never silently changes behaviour.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	var cfg Config
	if err := yaml.UnmarshalStrict(bytes.TrimSpace(data), &cfg); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Validate checks every pool and the relations between pools.
func (c Config) Validate() error {
	if len(c.Pools) == 0 {
		return fmt.Errorf("no pools configured: %w", ErrInvalid)
	}
	for i, root := range c.AdoptRoots {
		if !filepath.IsAbs(root) || filepath.Clean(root) != root || root == "/" {
			return fmt.Errorf("adoptRoots[%d]: %q must be a clean absolute path other than /: %w", i, root, ErrInvalid)
		}
	}
	names := map[string]bool{}
	for i, p := range c.Pools {
		if err := p.validate(); err != nil {
			return fmt.Errorf("pools[%d]: %w", i, err)
		}
		if names[p.Name] {
			return fmt.Errorf("pools[%d]: duplicate pool name %q: %w", i, p.Name, ErrInvalid)
		}
		names[p.Name] = true
		for _, root := range c.AdoptRoots {
			if nested(root, p.Path) {
				return fmt.Errorf("pools[%d] %q: path %s overlaps adopt root %s: %w", i, p.Name, p.Path, root, ErrInvalid)
			}
		}
		for j := 0; j < i; j++ {
			if nested(c.Pools[j].Path, p.Path) {
				return fmt.Errorf("pools[%d] %q: path %s overlaps pool %q at %s: %w",
					i, p.Name, p.Path, c.Pools[j].Name, c.Pools[j].Path, ErrInvalid)
			}
		}
	}
	return nil
}

func (p PoolConfig) validate() error {
	if err := ValidatePoolName(p.Name); err != nil {
		return err
	}
	if !filepath.IsAbs(p.Path) || filepath.Clean(p.Path) != p.Path || p.Path == "/" {
		return fmt.Errorf("pool %q: path %q must be a clean absolute path other than /: %w", p.Name, p.Path, ErrInvalid)
	}
	if _, ok := backends[p.Kind]; !ok {
		return fmt.Errorf("pool %q: unknown kind %q (known: %s): %w", p.Name, p.Kind, knownKinds(), ErrInvalid)
	}
	if p.ReservedBytes < 0 {
		return fmt.Errorf("pool %q: reservedBytes %d is negative: %w", p.Name, p.ReservedBytes, ErrInvalid)
	}
	if err := p.validateShared(); err != nil {
		return fmt.Errorf("pool %q: %w", p.Name, err)
	}
	return nil
}

// nested reports whether one of two clean absolute paths contains the other.
func nested(a, b string) bool {
	within := func(x, y string) bool { return x == y || len(y) > len(x) && y[:len(x)] == x && y[len(x)] == '/' }
	return within(a, b) || within(b, a)
}
