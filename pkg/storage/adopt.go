package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
)

// AdoptedPrefix starts the volume handle of every adopted (static) volume, e.g.
// "adopted-srv-data". Berth never deletes or purges the data behind such a handle.
const AdoptedPrefix = "adopted-"

// IsAdopted reports whether a volume ID names an adopted host directory.
func IsAdopted(id string) bool {
	return strings.HasPrefix(id, AdoptedPrefix) && len(id) > len(AdoptedPrefix)
}

// OpenAdopted opens the existing host directory path for adoption. path must be a
// clean absolute path strictly under one of the configured adopt roots, reached from
// that root without following a symlink at any component (openat2 RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS) and, unless the root allows crossing mounts, without leaving
// the root's filesystem (RESOLVE_NO_XDEV: a mount point or a bind mount below the
// root is refused); it must be a directory, and may neither be nor lie inside nor
// contain a pool's directory. The returned O_PATH handle is what gets bind-mounted
// (through /proc/self/fd), so the checked directory is the mounted one.
// Errors wrap ErrInvalid (malformed path) or ErrPrecondition (not adoptable here).
func (e *Engine) OpenAdopted(path string) (*os.File, error) {
	if path == "" || !filepath.IsAbs(path) || filepath.Clean(path) != path || strings.ContainsRune(path, 0) {
		return nil, fmt.Errorf("path %q must be a clean absolute path: %w", truncate(path), ErrInvalid)
	}
	var root AdoptRoot
	var rel string
	for _, r := range e.adoptRoots {
		if v, ok := strings.CutPrefix(path, r.Path+"/"); ok && v != "" {
			root, rel = r, v
			break
		}
	}
	if root.Path == "" {
		paths := make([]string, len(e.adoptRoots))
		for i, r := range e.adoptRoots {
			paths[i] = r.Path
		}
		return nil, fmt.Errorf("path %s is not under an allowed adopt root (adoptRoots: %v): %w", path, paths, ErrPrecondition)
	}
	for _, p := range e.pools {
		if nested(p.cfg.Path, path) {
			return nil, fmt.Errorf("path %s overlaps pool %s at %s: %w", path, p.cfg.Name, p.cfg.Path, ErrPrecondition)
		}
	}
	open := safefs.OpenBeneathOneFS
	if root.AllowCrossMounts {
		open = safefs.OpenBeneath
	}
	f, err := open(root.Path, rel, unix.O_PATH|unix.O_DIRECTORY)
	switch {
	case errors.Is(err, unix.ELOOP):
		return nil, fmt.Errorf("path %s: a component is a symlink (adopted paths are resolved from their root without symlinks): %w", path, ErrPrecondition)
	case errors.Is(err, unix.EXDEV) && !root.AllowCrossMounts:
		// rel is clean and has no "..": only a mount crossing leaves the root here.
		return nil, fmt.Errorf("path %s: a component is a mount point, and adopted paths stay on the filesystem of adopt root %s "+
			"(set allowCrossMounts on that root to allow crossing mounts): %w", path, root.Path, ErrPrecondition)
	case errors.Is(err, unix.EXDEV):
		return nil, fmt.Errorf("path %s leaves adopt root %s: %w", path, root.Path, ErrPrecondition)
	case errors.Is(err, unix.ENOTDIR):
		return nil, fmt.Errorf("path %s is not a directory: %w", path, ErrPrecondition)
	case errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("path %s does not exist: %w", path, ErrPrecondition)
	case err != nil:
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return f, nil
}

// ReservedDir is a host directory that adopt roots must keep clear of: What names it
// in errors ("the kubelet directory (--kubelet-dir)").
type ReservedDir struct{ What, Path string }

// CheckAdoptRoots refuses, at start-up, an adopt root that is, contains or lies
// inside a reserved directory: each given one (the kubelet directory, which holds
// every pod's volumes and secrets, and the driver's own socket, which a pod must
// never reach) and every pool's path (which holds Berth's records beside the volumes). Paths are compared
// both as written and as resolved (symlinks evaluated; for a path that does not
// exist yet, its longest existing parent), component by component, so /var/lib/kube
// neither contains nor lies inside /var/lib/kubelet. Errors wrap ErrInvalid.
func (c Config) CheckAdoptRoots(reserved ...ReservedDir) error {
	for _, p := range c.Pools {
		reserved = append(reserved, ReservedDir{What: fmt.Sprintf("pool %q", p.Name), Path: p.Path})
	}
	for i, root := range c.AdoptRoots {
		realRoot, err := realPath(root.Path)
		if err != nil {
			return fmt.Errorf("adoptRoots[%d] %s: %w", i, root.Path, err)
		}
		for _, d := range reserved {
			if d.Path == "" || d.Path == "/" {
				continue
			}
			realDir, err := realPath(d.Path)
			if err != nil {
				return fmt.Errorf("adoptRoots[%d] %s: %s %s: %w", i, root.Path, d.What, d.Path, err)
			}
			rel := relation(root.Path, d.Path)
			if rel == "" {
				rel = relation(realRoot, realDir)
			}
			if rel != "" {
				return fmt.Errorf("adoptRoots[%d] %s (%s) %s %s at %s (%s): an adopt root may not be, contain or lie inside "+
					"the kubelet directory, a pool or the driver's own state: %w", i, root.Path, realRoot, rel, d.What, d.Path, realDir, ErrInvalid)
			}
		}
	}
	return nil
}

// relation says how the clean absolute path root stands to dir: "is", "contains",
// "lies inside", or "" when neither holds the other.
func relation(root, dir string) string {
	switch {
	case root == dir:
		return "is"
	case nested(root, dir) && len(root) < len(dir):
		return "contains"
	case nested(root, dir):
		return "lies inside"
	}
	return ""
}

// realPath is path with every symlink resolved. A path that does not exist yet (a
// pool created at start-up) is its longest existing parent, resolved, joined with
// the rest.
func realPath(path string) (string, error) {
	path = filepath.Clean(path)
	rest := ""
	for cur := path; ; {
		r, err := filepath.EvalSymlinks(cur)
		if err == nil {
			return filepath.Join(r, rest), nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("resolve %s: %w", path, err)
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return path, nil
		}
		rest = filepath.Join(filepath.Base(cur), rest)
		cur = parent
	}
}
