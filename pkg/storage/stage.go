package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/berth-csi/berth/pkg/storage/meta"
)

// stagedFile marks a volume whose backing store is (being) attached on this node.
// It is written before the loop device is attached and removed after it is detached,
// so at start-up every loop device backing a pool image either belongs to a volume
// with this marker (kubelet will finish or undo the stage) or is a leftover to detach.
const stagedFile = "staged.json"

// Staging is what the node remembers of a staged volume.
type Staging struct {
	Path string `json:"path"` // the staging target path
}

// MarkStaged records, durably, that the volume is being staged at path.
func (p *Pool) MarkStaged(hash, path string) error {
	data, err := json.Marshal(Staging{Path: path})
	if err != nil {
		return err
	}
	return meta.WriteFile(p.VolumeDir(hash), stagedFile, data)
}

// Staged returns the volume's staging record, or nil when it is not staged.
func (p *Pool) Staged(hash string) (*Staging, error) {
	data, err := os.ReadFile(filepath.Join(p.VolumeDir(hash), stagedFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s Staging
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("decode staging record of %s: %w", hash, err)
	}
	return &s, nil
}

// ClearStaged removes the staging record, durably.
func (p *Pool) ClearStaged(hash string) error {
	err := os.Remove(filepath.Join(p.VolumeDir(hash), stagedFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return meta.SyncDir(p.VolumeDir(hash))
}

// ImagePath is the backing file of an image volume.
func (p *Pool) ImagePath(hash string) string { return filepath.Join(p.VolumeDir(hash), ImageFile) }

// Kind is the pool's kind; an auto pool's is what it became (dir or quota) once served.
func (p *Pool) Kind() string { return p.kind }
