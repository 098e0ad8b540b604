package safefs_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
)

// TestOpenRegular: a regular file opens for reading; a FIFO (never opened, so the
// call does not block), a directory and a symlink (taken as itself, never followed)
// are refused.
func TestOpenRegular(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "d"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("f", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	dirfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dirfd)
	fd, err := safefs.OpenRegular(dirfd, "f")
	if err != nil {
		t.Fatalf("regular file: %v", err)
	}
	buf := make([]byte, 1)
	if n, err := unix.Read(fd, buf); n != 1 || err != nil || buf[0] != 'x' {
		t.Errorf("read %d %q %v, want the file's byte", n, buf, err)
	}
	unix.Close(fd)
	for name, want := range map[string]error{"fifo": unix.EINVAL, "d": unix.EINVAL, "link": unix.EINVAL} {
		if fd, err := safefs.OpenRegular(dirfd, name); !errors.Is(err, want) {
			if err == nil {
				unix.Close(fd)
			}
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	}
}
