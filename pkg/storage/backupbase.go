package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/berth-csi/berth/pkg/storage/extents"
	"github.com/berth-csi/berth/pkg/storage/meta"
	"k8s.io/klog/v2"
)

// An image volume backed up from a pool with reflinks keeps its last backup's
// point-in-time copy beside it, volumes/<hash>/backup-base.image, and which backup
// that was, backup-base.json. The next backup compares its own copy with it by
// their extents (FIEMAP, extents.Changed: a block both share was not written
// between), so it reads and hashes only the chunks written since, and links the
// others from that backup without reading them. The base shares the extents the
// volume has not rewritten since; what was rewritten it holds alone, up to the
// volume's size. It goes with the volume (it is inside its directory).
const (
	baseImage  = "backup-base.image"
	baseRecord = "backup-base.json"
)

type baseInfo struct {
	Backup string `json:"backup"` // the backup (snapshot ID) whose copy the image is
}

// backupBase opens the kept copy of volume r when it is the one of backup id,
// else nil.
func (p *Pool) backupBase(r *Record, id string) *os.File {
	p.baseMu.Lock()
	defer p.baseMu.Unlock()
	dir := p.VolumeDir(r.Hash())
	data, err := os.ReadFile(filepath.Join(dir, baseRecord))
	var b baseInfo
	if err != nil || json.Unmarshal(data, &b) != nil || b.Backup != id {
		return nil
	}
	f, err := os.Open(filepath.Join(dir, baseImage))
	if err != nil {
		return nil
	}
	return f
}

// keepBase makes pit, the copy backup id was made from, volume r's base. Without
// reflinks a copy is the volume's full size: none is kept.
func (p *Pool) keepBase(ctx context.Context, r *Record, pit *pointInTime, id string) {
	if pit.reserved != 0 {
		return
	}
	p.baseMu.Lock()
	defer p.baseMu.Unlock()
	dir := p.VolumeDir(r.Hash())
	// The record first: a crash between the steps leaves no base, never a
	// record naming another backup's copy.
	err := os.Remove(filepath.Join(dir, baseRecord))
	if err == nil || errors.Is(err, os.ErrNotExist) {
		err = os.Rename(pit.path, filepath.Join(dir, baseImage))
	}
	if err == nil {
		var data []byte
		if data, err = json.Marshal(baseInfo{Backup: id}); err == nil {
			err = meta.WriteFile(dir, baseRecord, data)
		}
	}
	if err != nil {
		klog.FromContext(ctx).Error(err, "Cannot keep the backup's copy for the next one; it reads the whole image", "volumeID", r.ID)
	}
}

// changedChunks returns, per chunk of target, the ranges written since base (by
// their extents; none for a chunk unchanged); nil when that cannot be told (the
// next backup then reads them all).
func changedChunks(ctx context.Context, base *os.File, target string, chunkSize int64) ([][]extents.Range, extents.Stats, error) {
	t, err := os.Open(target)
	if err != nil {
		return nil, extents.Stats{}, err
	}
	defer t.Close()
	info, err := t.Stat()
	if err != nil {
		return nil, extents.Stats{}, err
	}
	size := info.Size()
	changed := make([][]extents.Range, (size+chunkSize-1)/chunkSize)
	st, err := extents.Changed(ctx, base, t, 0, size, func(r extents.Range) error {
		for i := r.Offset / chunkSize; i*chunkSize < r.End() && i < int64(len(changed)); i++ {
			changed[i] = append(changed[i], r)
		}
		return nil
	})
	if err != nil {
		return nil, st, fmt.Errorf("compare with the previous backup's copy: %w", err)
	}
	return changed, st, nil
}
