package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/berth-csi/berth/pkg/storage/clone"
	"github.com/berth-csi/berth/pkg/storage/extents"
	"github.com/berth-csi/berth/pkg/storage/meta"
	"golang.org/x/sys/unix"
)

// An image backup is its image cut into chunks (backup.go): chunks/<index, 8 hex
// digits>, each exactly the image's bytes at index*chunkSize (the last one
// shorter), and chunks.json, the manifest. A chunk that holds only zeros (or
// holes) has no file and an empty hash; one whose hash equals the previous
// backup's chunk at the same index is a hard link of it. A chunk of which few
// blocks changed since the previous backup is a patch (backuppatch.go):
// <index>.base, a hard link of an earlier backup's whole chunk, and <index>.patch,
// the blocks that differ from it.
const (
	backupChunkSize = 4 << 20
	chunksDir       = "chunks"
	chunksManifest  = "chunks.json"
)

// chunkManifest is chunks.json.
type chunkManifest struct {
	Size      int64    `json:"size"`
	ChunkSize int64    `json:"chunkSize"`
	SHA256    []string `json:"sha256"` // per chunk, "" for zeros or a patched chunk
	// Patched are the chunks stored as a base and a patch, by index.
	Patched map[int]patchEntry `json:"patched,omitempty"`
}

type chunkStats struct{ written, linked, unread int64 }

func chunkName(i int) string { return fmt.Sprintf("%08x", i) }

func readManifest(dir string) (*chunkManifest, error) {
	data, err := os.ReadFile(filepath.Join(dir, chunksManifest))
	if err != nil {
		return nil, err
	}
	var m chunkManifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, chunksManifest), err)
	}
	if m.ChunkSize <= 0 || m.ChunkSize%patchBlock != 0 || m.Size < 0 || int64(len(m.SHA256)) != (m.Size+m.ChunkSize-1)/m.ChunkSize {
		return nil, fmt.Errorf("%s: %d chunks of %d bytes do not make %d bytes", filepath.Join(dir, chunksManifest), len(m.SHA256), m.ChunkSize, m.Size)
	}
	for i := range m.Patched {
		if i < 0 || i >= len(m.SHA256) || m.SHA256[i] != "" {
			return nil, fmt.Errorf("%s: patched chunk %d is not a chunk without a hash", filepath.Join(dir, chunksManifest), i)
		}
	}
	return &m, nil
}

// writeChunks cuts the image at path into dir's chunks/ and writes the manifest.
// prevDir, when not empty, is the previous backup of the same volume: a chunk
// whose hash its manifest has at the same index is linked from it rather than
// written. The image is read, its holes skipped, except where changed (when not
// nil: per chunk, the ranges written since that backup, from extents) says
// otherwise: an unchanged chunk is taken from it unread, and one of which few
// blocks changed becomes a patch of it, reading only those blocks.
func writeChunks(ctx context.Context, path, dir, prevDir string, changed [][]extents.Range) (chunkStats, error) {
	f, err := os.Open(path)
	if err != nil {
		return chunkStats{}, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return chunkStats{}, err
	}
	size := info.Size()
	w := &chunkWriter{img: f, size: size, out: filepath.Join(dir, chunksDir), prevDir: prevDir}
	if prevDir != "" {
		if w.prev, err = readManifest(prevDir); err != nil || w.prev.ChunkSize != backupChunkSize {
			w.prev = nil // a full backup then
		}
	}
	if w.prev == nil {
		changed = nil
	}
	if err := os.Mkdir(w.out, 0o700); err != nil {
		return w.st, err
	}
	w.m = &chunkManifest{Size: size, ChunkSize: backupChunkSize, SHA256: make([]string, (size+backupChunkSize-1)/backupChunkSize),
		Patched: map[int]patchEntry{}}
	buf := make([]byte, backupChunkSize)
	for i := range w.m.SHA256 {
		if err := ctx.Err(); err != nil {
			return w.st, err
		}
		n := min(backupChunkSize, size-int64(i)*backupChunkSize)
		if changed != nil && i < len(changed) {
			done, err := w.fromPrevious(i, n, changed[i])
			if err != nil || done {
				if err != nil {
					return w.st, err
				}
				continue
			}
		}
		if err := w.whole(i, n, buf); err != nil {
			return w.st, err
		}
	}
	data, err := json.Marshal(w.m)
	if err != nil {
		return w.st, err
	}
	return w.st, meta.WriteNew(filepath.Join(dir, chunksManifest), data)
}

// chunkWriter is one writeChunks.
type chunkWriter struct {
	img          *os.File
	size         int64
	out, prevDir string
	prev, m      *chunkManifest
	st           chunkStats
}

// whole stores chunk i (n bytes) read from the image: nothing for zeros, a link
// of the previous backup's chunk of the same hash, else a new file.
func (w *chunkWriter) whole(i int, n int64, buf []byte) error {
	off, name := int64(i)*backupChunkSize, chunkName(i)
	data, _, err := clone.NextData(int(w.img.Fd()), off, w.size)
	if err != nil {
		return fmt.Errorf("%s: find data: %w", w.img.Name(), err)
	}
	if data >= off+n {
		return nil // a hole: zeros
	}
	chunk := buf[:n]
	if _, err := w.img.ReadAt(chunk, off); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: read chunk %d: %w", w.img.Name(), i, err)
	}
	if clone.AllZero(chunk) {
		return nil
	}
	sum := sha256.Sum256(chunk)
	w.m.SHA256[i] = hex.EncodeToString(sum[:])
	if w.prev != nil && i < len(w.prev.SHA256) && w.prev.SHA256[i] == w.m.SHA256[i] {
		if err := os.Link(filepath.Join(w.prevDir, chunksDir, name), filepath.Join(w.out, name)); err == nil {
			w.st.linked += n
			return nil
		}
		// Gone or at its link limit: written again below.
	}
	if err := writeChunk(filepath.Join(w.out, name), chunk); err != nil {
		return err
	}
	w.st.written += n
	return nil
}

func writeChunk(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// restoreChunks rebuilds the image of the chunked backup in dir at dst (which
// must not exist), sparse: absent chunks stay holes. Every chunk is checked
// against its hash; a damaged or missing one fails the restore, naming it.
// progress, when not nil, is told the bytes done.
func restoreChunks(ctx context.Context, dir, dst string, progress func(int64)) error {
	m, err := readManifest(dir)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(m.Size); err != nil {
		return err
	}
	for i, want := range m.SHA256 {
		if err := ctx.Err(); err != nil {
			return err
		}
		off := int64(i) * m.ChunkSize
		if p, ok := m.Patched[i]; ok {
			data, err := readPatched(dir, i, p, min(m.ChunkSize, m.Size-off))
			if err != nil {
				return err
			}
			if _, err := f.WriteAt(data, off); err != nil {
				return err
			}
		} else if want != "" {
			path := filepath.Join(dir, chunksDir, chunkName(i))
			data, err := os.ReadFile(path)
			if err != nil {
				return fmt.Errorf("backup chunk %d: %w", i, err)
			}
			sum := sha256.Sum256(data)
			if hex.EncodeToString(sum[:]) != want || int64(len(data)) != min(m.ChunkSize, m.Size-off) {
				return fmt.Errorf("backup chunk %d (%s) is damaged: its SHA-256 or length does not match chunks.json", i, path)
			}
			if _, err := f.WriteAt(data, off); err != nil {
				return err
			}
		}
		if progress != nil {
			progress(min(off+m.ChunkSize, m.Size))
		}
	}
	return f.Close()
}
