package testutil

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func MkdirAll(t testing.TB, path string) {
	t.Helper()
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatal(err)
	}
}

func WriteFile(t testing.TB, path, content string) {
	t.Helper()
	MkdirAll(t, filepath.Dir(path))
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// WriteRandom writes size random bytes to path and returns their sha256.
func WriteRandom(t testing.TB, path string, size int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func SHA256File(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func Lstat(t testing.TB, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func AssertContent(t testing.TB, path, want string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s = %q, want %q", path, got, want)
	}
}

// Xattrs returns the extended attributes of path itself (not of a symlink's
// target), name to value.
func Xattrs(t testing.TB, path string) map[string]string {
	t.Helper()
	n, err := unix.Llistxattr(path, nil)
	if err != nil {
		t.Fatalf("llistxattr %s: %v", path, err)
	}
	buf := make([]byte, n)
	if n, err = unix.Llistxattr(path, buf); err != nil {
		t.Fatalf("llistxattr %s: %v", path, err)
	}
	m := make(map[string]string)
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		sz, err := unix.Lgetxattr(path, name, nil)
		if err != nil {
			t.Fatalf("lgetxattr %s %s: %v", path, name, err)
		}
		val := make([]byte, sz)
		if sz, err = unix.Lgetxattr(path, name, val); err != nil {
			t.Fatalf("lgetxattr %s %s: %v", path, name, err)
		}
		m[name] = string(val[:sz])
	}
	return m
}

func SetXattr(t testing.TB, path, name, value string) {
	t.Helper()
	if err := unix.Lsetxattr(path, name, []byte(value), 0); err != nil {
		t.Fatalf("lsetxattr %s %s: %v", path, name, err)
	}
}

// Seek returns lseek(path, off, whence) (SEEK_DATA or SEEK_HOLE); -1 for ENXIO.
func Seek(t testing.TB, path string, off int64, whence int) int64 {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	pos, err := unix.Seek(fd, off, whence)
	if err == unix.ENXIO {
		return -1
	}
	if err != nil {
		t.Fatalf("seek %s %d: %v", path, off, err)
	}
	return pos
}

// ReadAt reads n bytes of path at off.
func ReadAt(t testing.TB, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil {
		t.Fatalf("read %s at %d: %v", path, off, err)
	}
	return buf
}
