package storage

import (
	"bytes"
	"encoding/json"
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
	// Ephemeral says whether CSI ephemeral inline volumes may use the pool.
	Ephemeral EphemeralConfig `json:"ephemeral,omitempty"`

	// The keys below are for shared pools only (see sharedkind.go).

	// Source is the distributed filesystem to mount at Path (e.g. 127.0.0.1:/gv0).
	// Empty: the operator mounts it at Path on every host.
	Source string `json:"source,omitempty"`
	// FSType is Source's filesystem type for mount(8): glusterfs, nfs, nfs4 or ceph.
	FSType string `json:"fsType,omitempty"`
	// MountOptions are passed to mount(8) with -o (nosuid and nodev are always added).
	// Credentials (secret=, password=...) are refused: a file option names them
	// (ceph's secretfile=, a Secret mounted into the driver).
	MountOptions []string `json:"mountOptions,omitempty"`
	// GlusterQuota enforces volume sizes with GlusterFS directory quotas.
	GlusterQuota bool `json:"glusterQuota,omitempty"`
}

// EphemeralConfig is a pool's policy for CSI ephemeral inline volumes. A pod picks
// an inline volume's pool and size itself (volumeAttributes), bypassing
// StorageClasses and ResourceQuota, so only a pool the admin marks takes them, and
// only up to a maximum size.
type EphemeralConfig struct {
	// Allowed lets inline volumes use the pool; one that names no pool gets the
	// first pool that allows them.
	Allowed bool `json:"allowed,omitempty"`
	// MaxSize is the largest inline volume, a quantity such as 1Gi. Empty: 1Gi
	// (DefaultCapacityBytes). An inline volume that names no size gets the smaller
	// of MaxSize and 1Gi.
	MaxSize string `json:"maxSize,omitempty"`
}

// maxBytes is the largest inline volume the policy allows (0: none). The
// configuration was validated, so MaxSize parses.
func (c EphemeralConfig) maxBytes() int64 {
	if !c.Allowed {
		return 0
	}
	if c.MaxSize == "" {
		return DefaultCapacityBytes
	}
	n, _ := ParseQuantity(c.MaxSize)
	return n
}

func (c EphemeralConfig) validate() error {
	if c.MaxSize == "" {
		return nil
	}
	if !c.Allowed {
		return fmt.Errorf("ephemeral.maxSize is set but ephemeral.allowed is not: %w", ErrInvalid)
	}
	n, err := ParseQuantity(c.MaxSize)
	if err != nil {
		return fmt.Errorf("ephemeral.maxSize: %w: %w", err, ErrInvalid)
	}
	if n == 0 {
		return fmt.Errorf("ephemeral.maxSize is 0: to refuse inline volumes, leave ephemeral.allowed unset: %w", ErrInvalid)
	}
	return nil
}

// Config is the whole --config file.
type Config struct {
	Pools []PoolConfig `json:"pools"`
	// AdoptRoots are the host directories under which existing directories may be
	// adopted as static volumes. None by default.
	AdoptRoots []AdoptRoot `json:"adoptRoots,omitempty"`
}

// AdoptRoot is one entry of `adoptRoots:`: a plain path (the original form, still
// accepted and written back so when it carries no option), or an object with the
// path and its options.
type AdoptRoot struct {
	// Path is the clean absolute host directory under which directories may be adopted.
	Path string `json:"path"`
	// AllowCrossMounts lets an adopted path's resolution from the root cross mount
	// points (a filesystem mounted, or a directory bind-mounted, below the root).
	// Off: resolution stays on the root's filesystem.
	AllowCrossMounts bool `json:"allowCrossMounts,omitempty"`
}

// UnmarshalJSON reads either form of an adopt root, refusing unknown keys.
func (r *AdoptRoot) UnmarshalJSON(b []byte) error {
	var path string
	if err := json.Unmarshal(b, &path); err == nil {
		*r = AdoptRoot{Path: path}
		return nil
	}
	type plain AdoptRoot
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var v plain
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("an adopt root is a path or {path, allowCrossMounts}: %w", err)
	}
	*r = AdoptRoot(v)
	return nil
}

// MarshalJSON writes a root without options in the plain form.
func (r AdoptRoot) MarshalJSON() ([]byte, error) {
	if !r.AllowCrossMounts {
		return json.Marshal(r.Path)
	}
	type plain AdoptRoot
	return json.Marshal(plain(r))
}

// DefaultConfig is used when no --config is given: one pool named "default" of kind
// auto, which enforces volume sizes where the filesystem under DefaultPoolPath
// enforces project quotas (a quota pool), and says so where it does not (a dir
// pool; autokind.go). It takes inline ephemeral volumes of up to 1Gi.
func DefaultConfig() Config {
	return Config{Pools: []PoolConfig{{Name: "default", Path: DefaultPoolPath, Kind: KindAuto,
		Ephemeral: EphemeralConfig{Allowed: true}}}}
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
	for i, r := range c.AdoptRoots {
		root := r.Path
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
			if nested(root.Path, p.Path) {
				return fmt.Errorf("pools[%d] %q: path %s overlaps adopt root %s: %w", i, p.Name, p.Path, root.Path, ErrInvalid)
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
	if err := p.Ephemeral.validate(); err != nil {
		return fmt.Errorf("pool %q: %w", p.Name, err)
	}
	if p.Ephemeral.Allowed {
		// The kind says whether it can serve inline volumes at all.
		pool := &Pool{cfg: p, backend: backends[p.Kind](p, Host{})}
		if err := pool.nodeKind().CanServeInline(pool); err != nil {
			return fmt.Errorf("pool %q: ephemeral.allowed: %w", p.Name, err)
		}
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
