package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/berth-csi/berth/pkg/mounter"
	"k8s.io/klog/v2"
)

// KindShared is a pool whose root is a distributed filesystem (GlusterFS, CephFS, NFS)
// that every host mounts at the pool path: a directory per volume, reachable from any
// node. See docs/design.md, "Shared pools".
const KindShared = "shared"

// SharedFSTypes are the filesystems Berth mounts itself for a shared pool with a source.
var SharedFSTypes = []string{"glusterfs", "nfs", "nfs4", "ceph"}

// CommandRunner runs a command and returns its combined output. Every child process
// of the engine (mount(8), the gluster CLI) goes through one, so the engine never
// builds a shell command line.
type CommandRunner func(ctx context.Context, name string, args ...string) ([]byte, error)

// ExecCommand runs commands with os/exec. Its error carries the command line and
// the output, with the value of every credential option masked (mounter.Redact):
// errors reach logs, /readyz and VolumeCondition messages.
func ExecCommand(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return out, mounter.RedactError(fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out))))
	}
	return out, nil
}

func init() {
	backends[KindShared] = func(cfg PoolConfig, h Host) Backend {
		return &sharedBackend{cfg: cfg, run: h.Run, mounts: h.Mounts}
	}
}

var (
	glusterSource = regexp.MustCompile(`^([A-Za-z0-9.:\[\]-]+):/([A-Za-z0-9_.-]+)((?:/[A-Za-z0-9_.-]+)*)$`)
	mountOption   = regexp.MustCompile(`^[A-Za-z0-9_.:/=@+-]+$`)
)

// validateShared checks the shared-pool keys: only on shared pools, a source always
// with its type, options without commas (each is one -o item), quotas only where the
// volume name and path can be derived from a GlusterFS source.
func (p PoolConfig) validateShared() error {
	if p.Kind != KindShared {
		switch {
		case p.Source != "", p.FSType != "", len(p.MountOptions) > 0, p.GlusterQuota:
			return fmt.Errorf("source, fsType, mountOptions and glusterQuota are for shared pools, not kind %q: %w", p.Kind, ErrInvalid)
		}
		return nil
	}
	if (p.Source == "") != (p.FSType == "") {
		return fmt.Errorf("source and fsType go together (or neither, when the operator mounts the pool path): %w", ErrInvalid)
	}
	if p.FSType != "" && !slices.Contains(SharedFSTypes, p.FSType) {
		return fmt.Errorf("fsType %q is not one Berth mounts (use one of %v): %w", p.FSType, SharedFSTypes, ErrInvalid)
	}
	if strings.ContainsAny(p.Source, " \t\n,\x00") || strings.HasPrefix(p.Source, "-") {
		return fmt.Errorf("source %q must be one word not starting with '-': %w", p.Source, ErrInvalid)
	}
	if p.Source == "" && len(p.MountOptions) > 0 {
		return fmt.Errorf("mountOptions need source and fsType: %w", ErrInvalid)
	}
	if p.FSType == "glusterfs" {
		_, _, subdir := glusterVolume(p.Source)
		if !glusterSource.MatchString(p.Source) || slices.ContainsFunc(strings.Split(subdir, "/"), func(s string) bool { return s == "." || s == ".." }) {
			return fmt.Errorf("source %q is not host:/volume[/subdir] as GlusterFS wants: %w", p.Source, ErrInvalid)
		}
	}
	for i, o := range p.MountOptions {
		if key, ok := mounter.CredentialOption(o); ok {
			return fmt.Errorf("mountOptions[%d]: %s= would put a credential in the configuration (a ConfigMap) and in mount errors; "+
				"put it in a Secret mounted as a file (chart value mountSecrets) and name the file (ceph: secretfile=/etc/berth/secrets/<secret>/<key>) "+
				"(pools[].mountOptions: no credentials): %w", i, key, ErrInvalid)
		}
		if !mountOption.MatchString(o) {
			return fmt.Errorf("mountOptions[%d] %q: one option of [A-Za-z0-9_.:/=@+-], no commas: %w", i, mounter.Redact(o), ErrInvalid)
		}
		if key, file, ok := strings.Cut(o, "="); ok && credentialFileOption(key) && (!filepath.IsAbs(file) || filepath.Clean(file) != file) {
			return fmt.Errorf("mountOptions[%d]: %s= must name a clean absolute path (a Secret's file, e.g. /etc/berth/secrets/<secret>/<key>): %w", i, key, ErrInvalid)
		}
	}
	if p.GlusterQuota && p.FSType != "glusterfs" {
		return fmt.Errorf("glusterQuota needs fsType glusterfs and its source: %w", ErrInvalid)
	}
	return nil
}

// credentialFileOption reports whether key is a mount option naming a file that
// holds credentials (ceph's secretfile=, cifs' credentials=).
func credentialFileOption(key string) bool {
	return strings.EqualFold(key, "secretfile") || strings.EqualFold(key, "credentials")
}

// glusterVolume splits a GlusterFS source into the volume name and the subdirectory
// of the volume that is mounted ("" for the whole volume).
func glusterVolume(source string) (host, volume, subdir string) {
	m := glusterSource.FindStringSubmatch(source)
	if m == nil {
		return "", "", ""
	}
	return m[1], m[2], m[3]
}

// sharedBackend lays out volumes like dirBackend, on a filesystem shared by every
// host. With a source, it mounts that filesystem once per process host at the pool
// path, and again when the mount has died.
type sharedBackend struct {
	localDirNode // recovery, stats and growth are a directory's; see sharednode.go

	cfg    PoolConfig
	run    CommandRunner
	mounts Mounter

	mu           sync.Mutex // serialises mounting and enabling quotas
	quotaEnabled bool
}

func (*sharedBackend) SupportsBlock() bool { return false }

func (*sharedBackend) MultiNode() bool { return true }

func (*sharedBackend) SizeStep() int64 { return 1 }

func (*sharedBackend) Params() []string { return nil }

func (*sharedBackend) Filesystems() []string { return nil }

func (*sharedBackend) Data() (string, bool) { return DataDir, true }

func (*sharedBackend) InUse(context.Context, *Pool, *Record, string) error { return nil }

// Check is done by Mount, before the layout is created.
func (*sharedBackend) Check(context.Context, *Pool) error { return nil }

// Mount makes sure the shared filesystem answers at the pool path: a pool with a
// source is mounted when nothing is there, and remounted when its mount has died
// (ENOTCONN, ESTALE: a killed FUSE client); an operator-mounted pool must be a live
// mount point, as Berth never serves a shared pool from the node's own disk. A mount
// that fails leaves at most the empty directory it was to be made on.
func (b *sharedBackend) Mount(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	path := b.cfg.Path
	state, err := b.inspect(true)
	switch {
	case state == mountLive:
		return nil
	case b.cfg.Source == "" || state == mountForeign || state == mountUnknown:
		return err
	case state == mountDead:
		klog.FromContext(ctx).Info("Remounting dead shared pool mount", "pool", b.cfg.Name, "path", path, "err", err.Error())
		// Lazily: bind mounts of the dead mount (stagings, publications) keep it busy.
		if err := b.mounts.Unmount(path); err != nil {
			return fmt.Errorf("shared pool %s: %w", b.cfg.Name, err)
		}
	case state == mountMissing:
		if err := os.MkdirAll(path, 0o700); err != nil {
			return fmt.Errorf("shared pool %s: %w", b.cfg.Name, err)
		}
	}
	opts := strings.Join(append([]string{"nosuid", "nodev"}, b.cfg.MountOptions...), ",")
	if _, err := b.run(ctx, "mount", "-t", b.cfg.FSType, "-o", opts, b.cfg.Source, path); err != nil {
		// Whatever runs mount(8), its error may echo the options or what a helper
		// read from a credentials file.
		return mounter.RedactError(fmt.Errorf("shared pool %s: mount %s at %s: %w", b.cfg.Name, b.cfg.Source, path, err))
	}
	// A helper that answers success without a mount in place must not let the
	// pool be laid out on the directory beneath.
	if state, err := b.inspect(true); state != mountLive {
		return fmt.Errorf("%w (though mount(8) answered success)", err)
	}
	klog.FromContext(ctx).V(2).Info("Shared pool mounted", "pool", b.cfg.Name, "source", b.cfg.Source, "path", path)
	return nil
}

// Live is nil when the pool path is the live mount the pool is served from: a mount
// point whose filesystem answers. It costs one statx (Mounter.IsMountPoint) and so
// runs before every operation on the pool; that the mount is of the configured
// source is checked by Mount, when the pool is mounted or served again and by the
// engine's periodic check, which read the mount table.
func (b *sharedBackend) Live() error {
	_, err := b.inspect(false)
	return err
}

// mountState is what the pool path shows.
type mountState int

const (
	mountLive    mountState = iota // the filesystem, answering
	mountDead                      // a mount that no longer answers (ENOTCONN, ESTALE)
	mountMissing                   // no directory at the path
	mountAbsent                    // a plain directory: the node's own disk
	mountForeign                   // a mount of something else than the source
	mountUnknown                   // the path cannot be checked
)

// inspect says what the pool path shows, and when it is not the live mount, why in
// an error naming the pool and the path. With source, the mount found at the path
// of a pool with a source must be of that source and type (a read of the mount
// table).
func (b *sharedBackend) inspect(source bool) (mountState, error) {
	name, path := b.cfg.Name, b.cfg.Path
	remedy := "the driver mounts it again"
	if b.cfg.Source == "" {
		remedy = "the operator mounts it: mount it again on this host"
	}
	mounted, err := b.mounts.IsMountPoint(path)
	switch {
	case errors.Is(err, mounter.ErrStale):
		return mountDead, fmt.Errorf("shared pool %s: the filesystem mounted at %s no longer answers (%v); %s", name, path, err, remedy)
	case errors.Is(err, os.ErrNotExist):
		return mountMissing, fmt.Errorf("shared pool %s: %s does not exist, so nothing is mounted there; %s", name, path, remedy)
	case err != nil:
		return mountUnknown, fmt.Errorf("shared pool %s: check the mount at %s: %w", name, path, err)
	case !mounted && b.cfg.Source == "":
		return mountAbsent, fmt.Errorf("shared pool %s: %s is not a mount point (the local disk beneath shows): mount the distributed filesystem there on every host, or configure source and fsType", name, path)
	case !mounted:
		return mountAbsent, fmt.Errorf("shared pool %s: %s is not a mount point (the local disk beneath shows); %s", name, path, remedy)
	case !source || b.cfg.Source == "":
		return mountLive, nil
	}
	m, err := b.mounts.At(path)
	if err != nil {
		return mountUnknown, fmt.Errorf("shared pool %s: %w", name, err)
	}
	if m != nil && m.Source == b.cfg.Source && (m.FSType == b.cfg.FSType || m.FSType == "fuse."+b.cfg.FSType) {
		return mountLive, nil
	}
	return mountForeign, fmt.Errorf("shared pool %s: %s is already a mount point of something else than %s", name, path, b.cfg.Source)
}

func (b *sharedBackend) Build(ctx context.Context, p *Pool, r *Record, volDir string) error {
	if err := (dirBackend{}).Build(ctx, p, r, volDir); err != nil {
		return err
	}
	return b.limit(ctx, filepath.Join(volDir, DataDir), r.CapacityBytes)
}

func (b *sharedBackend) Expand(ctx context.Context, _ *Pool, _ *Record, volDir string, newBytes int64) error {
	return b.limit(ctx, filepath.Join(volDir, DataDir), newBytes)
}

// Release has nothing to undo: a GlusterFS quota limit belongs to its directory and
// goes with it when the purger removes it.
func (*sharedBackend) Release(context.Context, *Pool, *Record) error { return nil }

// Usage walks the volume like a dir volume: the walk is the only measure every
// distributed filesystem offers.
func (*sharedBackend) Usage(ctx context.Context, p *Pool, r *Record, volDir string) (Usage, error) {
	return dirBackend{}.Usage(ctx, p, r, volDir)
}

// Full reports a volume at or past its size: accounted everywhere, and enforced only
// late by GlusterFS quotas (they are checked asynchronously), so this is how a volume
// that outgrew its size shows.
func (b *sharedBackend) Full(ctx context.Context, p *Pool, r *Record, volDir string) (bool, error) {
	u, err := b.Usage(ctx, p, r, volDir)
	if err != nil {
		return false, err
	}
	return u.UsedBytes >= u.TotalBytes, nil
}

// limit sets the GlusterFS directory quota of a volume's data directory to bytes,
// when the pool enforces sizes that way; setting the same limit again is harmless.
func (b *sharedBackend) limit(ctx context.Context, data string, bytes int64) error {
	if !b.cfg.GlusterQuota {
		return nil
	}
	_, volume, subdir := glusterVolume(b.cfg.Source)
	rel, err := filepath.Rel(b.cfg.Path, data)
	if err != nil || strings.HasPrefix(rel, "..") {
		return fmt.Errorf("volume data %s is outside pool %s", data, b.cfg.Path)
	}
	if err := b.enableQuota(ctx, volume); err != nil {
		return err
	}
	inVolume := subdir + "/" + rel
	if _, err := b.run(ctx, "gluster", "--mode=script", "volume", "quota", volume, "limit-usage", inVolume, strconv.FormatInt(bytes, 10)); err != nil {
		return fmt.Errorf("set GlusterFS quota of %s: %w", inVolume, err)
	}
	return nil
}

// enableQuota turns quotas on for the GlusterFS volume once per process. The gluster
// CLI changes quotas only through a glusterd of the trusted pool on this host (its
// --remote-host mode is read-only).
func (b *sharedBackend) enableQuota(ctx context.Context, volume string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.quotaEnabled {
		return nil
	}
	out, err := b.run(ctx, "gluster", "--mode=script", "volume", "get", volume, "features.quota")
	if err != nil {
		return fmt.Errorf("read GlusterFS quota state of %s: %w", volume, err)
	}
	if !quotaOn(string(out)) {
		if _, err := b.run(ctx, "gluster", "--mode=script", "volume", "quota", volume, "enable"); err != nil {
			return fmt.Errorf("enable GlusterFS quotas on %s: %w", volume, err)
		}
	}
	b.quotaEnabled = true
	return nil
}

// quotaOn reads `gluster volume get <vol> features.quota`: a table whose last line is
// "features.quota <value>".
func quotaOn(out string) bool {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "features.quota" {
			return f[1] == "on"
		}
	}
	return false
}

// poolMounter is a backend whose filesystem the engine must mount before it lays out
// the pool, and again when the mount has died: Live is the cheap check that it still
// answers there, Mount the full one, which mounts it when it can.
type poolMounter interface {
	Mount(ctx context.Context) error
	Live() error
}

// EnsureMounted makes sure a shared pool's filesystem answers, remounting it when its
// mount has died. Other kinds have nothing to mount.
func (p *Pool) EnsureMounted(ctx context.Context) error {
	if m, ok := p.backend.(poolMounter); ok {
		return m.Mount(ctx)
	}
	return nil
}
