package storage

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/berth-csi/berth/pkg/storage/extents"
)

// A patched chunk (backupimage.go) is <index>.base, a hard link of an earlier
// backup's whole chunk, and <index>.patch, the 4 KiB blocks of the chunk that
// differ from it: records of a block's index in the chunk (4 bytes, little
// endian) and its 4096 bytes, in index order. A backup whose chunk changed in a
// few blocks since the previous one writes those blocks only; a patch of a
// patched chunk keeps the same base and merges the blocks, until they pass
// maxPatchBlocks and the chunk is written whole again. Each backup holds links to
// every file it needs, so deleting earlier backups never breaks it.
const (
	patchBlock     = 4096
	maxPatchBlocks = backupChunkSize / patchBlock / 4
)

// patchEntry is a patched chunk in the manifest: the SHA-256 of its two files.
type patchEntry struct {
	Base   string `json:"base"`
	Patch  string `json:"patch"`
	Blocks int    `json:"blocks"`
}

// fromPrevious stores chunk i (n bytes), which changed in the ranges written (the
// image's offsets) since the previous backup, from that backup where it can: as
// it was when nothing was written, as a patch of it when few blocks were. False
// when the chunk must be read whole.
func (w *chunkWriter) fromPrevious(i int, n int64, written []extents.Range) (bool, error) {
	if i >= len(w.prev.SHA256) || min(backupChunkSize, w.prev.Size-int64(i)*backupChunkSize) != n {
		return false, nil // the volume grew: a new chunk, or a longer one
	}
	prevPatch, patched := w.prev.Patched[i]
	name := chunkName(i)
	link := func(suffix string) bool {
		return os.Link(filepath.Join(w.prevDir, chunksDir, name+suffix), filepath.Join(w.out, name+suffix)) == nil
	}
	if len(written) == 0 {
		switch {
		case patched && link(".base"):
			if !link(".patch") {
				_ = os.Remove(filepath.Join(w.out, name+".base"))
				return false, nil // gone, or at its link limit
			}
			w.m.Patched[i] = prevPatch
		case patched:
			return false, nil
		case w.prev.SHA256[i] == "":
			return true, nil // zeros, as then
		case link(""):
			w.m.SHA256[i] = w.prev.SHA256[i]
		default:
			return false, nil
		}
		w.st.linked += n
		w.st.unread += n
		return true, nil
	}
	if !patched && w.prev.SHA256[i] == "" {
		return false, nil // was zeros: nothing to patch
	}
	blocks := map[uint32][]byte{}
	base := w.prev.SHA256[i]
	if patched {
		var err error
		if blocks, err = readPatch(filepath.Join(w.prevDir, chunksDir, name+".patch"), prevPatch.Patch); err != nil {
			return false, nil // a damaged patch is not built on
		}
		base = prevPatch.Base
	}
	off := int64(i) * backupChunkSize
	read := int64(0)
	for _, r := range written {
		from, to := max(r.Offset, off)/patchBlock*patchBlock, min(r.End(), off+n)
		for b := from; b < to; b += patchBlock {
			idx := uint32((b - off) / patchBlock)
			if _, seen := blocks[idx]; !seen && len(blocks) >= maxPatchBlocks {
				return false, nil
			}
			data := make([]byte, patchBlock)
			if _, err := w.img.ReadAt(data, b); err != nil {
				return false, fmt.Errorf("%s: read block at %d: %w", w.img.Name(), b, err)
			}
			blocks[idx] = data
			read += patchBlock
		}
	}
	baseFile := name
	if patched {
		baseFile += ".base"
	}
	if err := os.Link(filepath.Join(w.prevDir, chunksDir, baseFile), filepath.Join(w.out, name+".base")); err != nil {
		return false, nil
	}
	sum, size, err := writePatch(filepath.Join(w.out, name+".patch"), blocks)
	if err != nil {
		return false, err
	}
	w.m.Patched[i] = patchEntry{Base: base, Patch: sum, Blocks: len(blocks)}
	w.st.written += size
	w.st.linked += n
	w.st.unread += n - read
	return true, nil
}

// writePatch writes blocks as a patch file and returns its SHA-256 and size.
func writePatch(path string, blocks map[uint32][]byte) (string, int64, error) {
	data := make([]byte, 0, len(blocks)*(4+patchBlock))
	for _, idx := range slices.Sorted(maps.Keys(blocks)) {
		data = binary.LittleEndian.AppendUint32(data, idx)
		data = append(data, blocks[idx]...)
	}
	if err := writeChunk(path, data); err != nil {
		return "", 0, err
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), int64(len(data)), nil
}

// readPatch reads the patch file at path, which must have SHA-256 want.
func readPatch(path, want string) (map[uint32][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != want {
		return nil, fmt.Errorf("%s is damaged: its SHA-256 does not match chunks.json", path)
	}
	if len(data)%(4+patchBlock) != 0 {
		return nil, fmt.Errorf("%s: %d bytes are not whole blocks", path, len(data))
	}
	blocks := make(map[uint32][]byte, len(data)/(4+patchBlock))
	for ; len(data) > 0; data = data[4+patchBlock:] {
		blocks[binary.LittleEndian.Uint32(data)] = data[4 : 4+patchBlock]
	}
	return blocks, nil
}

// readPatched rebuilds patched chunk i (n bytes) of the backup in dir: its base,
// checked against its hash, with its patch's blocks over it.
func readPatched(dir string, i int, p patchEntry, n int64) ([]byte, error) {
	name := filepath.Join(dir, chunksDir, chunkName(i))
	data, err := os.ReadFile(name + ".base")
	if err != nil {
		return nil, fmt.Errorf("backup chunk %d: %w", i, err)
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != p.Base || int64(len(data)) != n {
		return nil, fmt.Errorf("backup chunk %d (%s.base) is damaged: its SHA-256 or length does not match chunks.json", i, name)
	}
	blocks, err := readPatch(name+".patch", p.Patch)
	if err != nil {
		return nil, fmt.Errorf("backup chunk %d: %w", i, err)
	}
	for idx, b := range blocks {
		at := int64(idx) * patchBlock
		if at+patchBlock > n {
			return nil, errors.New("backup chunk " + chunkName(i) + ": a patch block lies past the chunk's end")
		}
		copy(data[at:], b)
	}
	return data, nil
}
