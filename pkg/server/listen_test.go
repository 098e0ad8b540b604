package server

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// socketDir returns a fresh directory short enough for socket paths under it.
func socketDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if len(dir)+len("/sub/csi.sock") <= maxSocketPathLen {
		return dir
	}
	dir, err := os.MkdirTemp("", "b")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// withUmask runs f with the process umask set to mask.
func withUmask(t *testing.T, mask int, f func()) {
	t.Helper()
	old := unix.Umask(mask)
	defer unix.Umask(old)
	f()
}

// staleSocket leaves a socket file at path that nobody accepts on.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func mustListen(t *testing.T, path string) net.Listener {
	t.Helper()
	lis, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen(%s): %v", path, err)
	}
	t.Cleanup(func() { _ = lis.Close() })
	return lis
}

func TestListenModeIgnoresUmask(t *testing.T) {
	for _, mask := range []int{0, 0o077, 0o777} {
		withUmask(t, mask, func() {
			path := filepath.Join(socketDir(t), "sub", "csi.sock")
			mustListen(t, path)

			info, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if info.Mode().Type() != fs.ModeSocket || info.Mode().Perm() != 0o660 {
				t.Errorf("umask %#o: socket mode = %v, want socket 0660", mask, info.Mode())
			}
			dirInfo, err := os.Stat(filepath.Dir(path))
			if err != nil {
				t.Fatal(err)
			}
			if dirInfo.Mode().Perm() != 0o750 {
				t.Errorf("umask %#o: created directory mode = %v, want 0750", mask, dirInfo.Mode().Perm())
			}
		})
	}
}

func TestListenRestoresUmask(t *testing.T) {
	withUmask(t, 0o027, func() {
		mustListen(t, filepath.Join(socketDir(t), "csi.sock"))
		got := unix.Umask(0o027)
		if got != 0o027 {
			t.Errorf("umask after Listen = %#o, want 0027", got)
		}
	})
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(socketDir(t), "csi.sock")
	staleSocket(t, path)

	lis := mustListen(t, path)
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial the new socket: %v", err)
	}
	_ = conn.Close()
	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket still present after Close: %v", err)
	}
}

func TestListenRefusesLiveSocket(t *testing.T) {
	path := filepath.Join(socketDir(t), "csi.sock")
	live, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()

	lis, err := Listen(path)
	if err == nil {
		_ = lis.Close()
		t.Fatal("Listen on a live socket succeeded")
	}
	if !strings.Contains(err.Error(), "another process is serving on "+path) {
		t.Errorf("error = %q, want it to say another process is serving", err)
	}
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the live socket no longer accepts: %v", err)
	}
	_ = conn.Close()
}

func TestListenNeverRemovesOtherFiles(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir, path string)
	}{
		{name: "regular file", setup: func(t *testing.T, _, path string) {
			if err := os.WriteFile(path, []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "directory", setup: func(t *testing.T, _, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "dangling symlink", setup: func(t *testing.T, dir, path string) {
			if err := os.Symlink(filepath.Join(dir, "missing"), path); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "symlink to a stale socket", setup: func(t *testing.T, dir, path string) {
			target := filepath.Join(dir, "target.sock")
			staleSocket(t, target)
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := socketDir(t)
			path := filepath.Join(dir, "csi.sock")
			tc.setup(t, dir, path)
			before, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}

			lis, err := Listen(path)
			if err == nil {
				_ = lis.Close()
				t.Fatal("Listen succeeded over an existing non-socket")
			}
			after, err := os.Lstat(path)
			if err != nil {
				t.Fatalf("%s was removed: %v", tc.name, err)
			}
			if !os.SameFile(before, after) {
				t.Errorf("%s was replaced", tc.name)
			}
			if target, err := os.Readlink(path); err == nil && strings.HasSuffix(target, ".sock") {
				if _, err := os.Lstat(target); err != nil {
					t.Errorf("symlink target was removed: %v", err)
				}
			}
		})
	}
}

func TestListenCloseKeepsAnotherProcessSocket(t *testing.T) {
	path := filepath.Join(socketDir(t), "csi.sock")
	lis, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	// Someone else takes the name while we are still serving.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	other, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("Close removed a socket it did not create: %v", err)
	}
}

func TestListenRejectsBadPaths(t *testing.T) {
	for _, path := range []string{"", "relative.sock", "/" + strings.Repeat("a", maxSocketPathLen)} {
		if lis, err := Listen(path); err == nil {
			_ = lis.Close()
			t.Errorf("Listen(%q) succeeded", path)
		}
	}
}
