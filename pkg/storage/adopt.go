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
// RESOLVE_NO_SYMLINKS), must be a directory, and may neither be nor lie inside nor
// contain a pool's directory. The returned O_PATH handle is what gets bind-mounted
// (through /proc/self/fd), so the checked directory is the mounted one.
// Errors wrap ErrInvalid (malformed path) or ErrPrecondition (not adoptable here).
func (e *Engine) OpenAdopted(path string) (*os.File, error) {
	if path == "" || !filepath.IsAbs(path) || filepath.Clean(path) != path || strings.ContainsRune(path, 0) {
		return nil, fmt.Errorf("path %q must be a clean absolute path: %w", truncate(path), ErrInvalid)
	}
	var root, rel string
	for _, r := range e.adoptRoots {
		if v, ok := strings.CutPrefix(path, r+"/"); ok && v != "" {
			root, rel = r, v
			break
		}
	}
	if root == "" {
		return nil, fmt.Errorf("path %s is not under an allowed adopt root (adoptRoots: %v): %w", path, e.adoptRoots, ErrPrecondition)
	}
	for _, p := range e.pools {
		if nested(p.cfg.Path, path) {
			return nil, fmt.Errorf("path %s overlaps pool %s at %s: %w", path, p.cfg.Name, p.cfg.Path, ErrPrecondition)
		}
	}
	f, err := safefs.OpenBeneath(root, rel, unix.O_PATH|unix.O_DIRECTORY)
	switch {
	case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV):
		return nil, fmt.Errorf("path %s: a component is a symlink or leaves %s: %w", path, root, ErrPrecondition)
	case errors.Is(err, unix.ENOTDIR):
		return nil, fmt.Errorf("path %s is not a directory: %w", path, ErrPrecondition)
	case errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("path %s does not exist: %w", path, ErrPrecondition)
	case err != nil:
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return f, nil
}
