package storage

import (
	"bytes"
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
	"github.com/berth-csi/berth/pkg/storage/meta"
	"golang.org/x/sys/unix"
)

// An image backup is its image cut into chunks (backup.go): chunks/<index, 8 hex
// digits>, each exactly the image's bytes at index*chunkSize (the last one
// shorter), and chunks.json, the manifest. A chunk that holds only zeros (or
// holes) has no file and an empty hash; one whose hash equals the previous
// backup's chunk at the same index is a hard link of it.
const (
	backupChunkSize = 4 << 20
	chunksDir       = "chunks"
	chunksManifest  = "chunks.json"
)

// chunkManifest is chunks.json.
type chunkManifest struct {
	Size      int64    `json:"size"`
	ChunkSize int64    `json:"chunkSize"`
	SHA256    []string `json:"sha256"` // per chunk, "" for zeros
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
	if m.ChunkSize <= 0 || m.Size < 0 || int64(len(m.SHA256)) != (m.Size+m.ChunkSize-1)/m.ChunkSize {
		return nil, fmt.Errorf("%s: %d chunks of %d bytes do not make %d bytes", filepath.Join(dir, chunksManifest), len(m.SHA256), m.ChunkSize, m.Size)
	}
	return &m, nil
}

// writeChunks cuts the image at path into dir's chunks/ and writes the manifest.
// prevDir, when not empty, is the previous backup of the same volume: a chunk
// whose hash its manifest has at the same index is linked from it rather than
// written. The image is read, its holes skipped, except the chunks that changed
// (when not nil) says are unchanged since that backup: those are taken from it
// unread.
func writeChunks(ctx context.Context, path, dir, prevDir string, changed []bool) (chunkStats, error) {
	var st chunkStats
	f, err := os.Open(path)
	if err != nil {
		return st, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return st, err
	}
	size := info.Size()
	var prev *chunkManifest
	if prevDir != "" {
		if prev, err = readManifest(prevDir); err != nil || prev.ChunkSize != backupChunkSize {
			prev = nil // a full backup then
		}
	}
	out := filepath.Join(dir, chunksDir)
	if err := os.Mkdir(out, 0o700); err != nil {
		return st, err
	}
	m := &chunkManifest{Size: size, ChunkSize: backupChunkSize, SHA256: make([]string, (size+backupChunkSize-1)/backupChunkSize)}
	buf := make([]byte, backupChunkSize)
	for i := range m.SHA256 {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		off := int64(i) * backupChunkSize
		n := min(backupChunkSize, size-off)
		name := chunkName(i)
		if prev != nil && changed != nil && i < len(changed) && !changed[i] && i < len(prev.SHA256) {
			// Unchanged since the previous backup: its chunk, or zeros as there.
			m.SHA256[i] = prev.SHA256[i]
			if m.SHA256[i] == "" {
				continue
			}
			if err := os.Link(filepath.Join(prevDir, chunksDir, name), filepath.Join(out, name)); err == nil {
				st.linked += n
				st.unread += n
				continue
			}
			m.SHA256[i] = "" // its file is gone or full of links: read below
		}
		data, _, err := clone.NextData(int(f.Fd()), off, size)
		if err != nil {
			return st, fmt.Errorf("%s: find data: %w", path, err)
		}
		if data >= off+n {
			continue // a hole: zeros
		}
		chunk := buf[:n]
		if _, err := f.ReadAt(chunk, off); err != nil && !errors.Is(err, io.EOF) {
			return st, fmt.Errorf("%s: read chunk %d: %w", path, i, err)
		}
		if allZero(chunk) {
			continue
		}
		sum := sha256.Sum256(chunk)
		m.SHA256[i] = hex.EncodeToString(sum[:])
		if prev != nil && i < len(prev.SHA256) && prev.SHA256[i] == m.SHA256[i] {
			err := os.Link(filepath.Join(prevDir, chunksDir, name), filepath.Join(out, name))
			if err == nil {
				st.linked += n
				continue
			}
			// Gone or at its link limit: written again below.
		}
		if err := writeChunk(filepath.Join(out, name), chunk); err != nil {
			return st, err
		}
		st.written += n
	}
	data, err := json.Marshal(m)
	if err != nil {
		return st, err
	}
	return st, meta.WriteNew(filepath.Join(dir, chunksManifest), data)
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

func allZero(b []byte) bool {
	var zero [4096]byte
	for len(b) > 0 {
		n := min(len(b), len(zero))
		if !bytes.Equal(b[:n], zero[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
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
		if want != "" {
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
