package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// socketMode lets the owner and group (the kubelet and the sidecars) connect.
	socketMode = 0o660
	// socketUmask makes bind(2) create the socket with at most socketMode, so the
	// socket is never reachable with wider permissions, not even between bind and chmod.
	socketUmask = 0o117
	// socketDirMode is used for a parent directory Listen has to create.
	socketDirMode = 0o750
	// probeTimeout bounds the connect used to tell a live socket from a stale one.
	probeTimeout = time.Second
)

// umaskMu serialises the process-wide umask change made around bind(2) among
// callers of Listen. Files created by other goroutines during that short window
// also get umask 0117; Listen is meant to run once at startup.
var umaskMu sync.Mutex

// Listen creates a unix socket at path with mode 0660 whatever the process umask,
// creating its parent directory (0750) if missing.
//
// Whatever already exists at path is examined without following links: a socket
// nobody accepts on (connect gives ECONNREFUSED) is stale and is replaced; a socket
// somebody serves on is an error; anything else (file, directory, symlink) is an
// error and is never removed.
//
// Closing the returned listener removes the socket file only if it is still the
// one this call created (same device and inode), so it cannot remove a socket
// another process bound at the same path in the meantime. The standard library's
// SetUnlinkOnClose(true) would unlink whatever file holds the name at close time.
func Listen(path string) (net.Listener, error) {
	if err := checkSocketPath(path); err != nil {
		return nil, err
	}
	path = filepath.Clean(path)
	if err := ensureDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}

	ul, err := bindSocket(path)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (net.Listener, error) {
		_ = ul.Close() // unlinks: the socket is still ours
		return nil, err
	}
	if err := os.Chmod(path, socketMode); err != nil {
		return fail(fmt.Errorf("chmod socket %s: %w", path, err))
	}
	info, err := os.Lstat(path)
	if err != nil {
		return fail(fmt.Errorf("stat socket %s: %w", path, err))
	}
	ul.SetUnlinkOnClose(false)
	return &unixListener{UnixListener: ul, path: path, info: info}, nil
}

// bindSocket binds and listens on path with the restrictive umask in place.
func bindSocket(path string) (*net.UnixListener, error) {
	umaskMu.Lock()
	old := unix.Umask(socketUmask)
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	umaskMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// Until Listen hands the listener out, Close must remove the socket it made.
	ul.SetUnlinkOnClose(true)
	return ul, nil
}

// ensureDir creates dir with socketDirMode if it does not exist.
func ensureDir(dir string) error {
	info, err := os.Stat(dir)
	switch {
	case err == nil:
		if !info.IsDir() {
			return fmt.Errorf("socket directory %s is not a directory", dir)
		}
		return nil
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("stat socket directory %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, socketDirMode); err != nil {
		return fmt.Errorf("create socket directory %s: %w", dir, err)
	}
	// MkdirAll honours the umask; the directory Listen asked for gets exactly 0750.
	if err := os.Chmod(dir, socketDirMode); err != nil {
		return fmt.Errorf("chmod socket directory %s: %w", dir, err)
	}
	return nil
}

// removeStaleSocket clears path for bind(2) if it holds a socket nobody serves on.
func removeStaleSocket(path string) error {
	info, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if info.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket (%s); refusing to remove it", path, info.Mode().Type())
	}

	conn, err := net.DialTimeout("unix", path, probeTimeout)
	switch {
	case err == nil:
		_ = conn.Close()
		return fmt.Errorf("another process is serving on %s", path)
	case errors.Is(err, syscall.ENOENT):
		return nil // removed since the Lstat
	case !errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("probe existing socket %s: %w", path, err)
	}

	// Stale. Remove it only if it is still the file examined above.
	again, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if !os.SameFile(info, again) {
		return fmt.Errorf("%s was replaced while checking it; refusing to remove it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}

// unixListener removes its socket file on Close, but only while the name still
// refers to the socket it created.
type unixListener struct {
	*net.UnixListener
	path string
	info os.FileInfo
	once sync.Once
}

// Close stops accepting and removes the socket file if it is still ours.
func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		cur, statErr := os.Lstat(l.path)
		if statErr == nil && os.SameFile(cur, l.info) {
			_ = os.Remove(l.path)
		}
	})
	return err
}

// UnixTransport is an HTTP transport whose every connection dials the unix
// socket at path, whatever the URL's host: for the HTTP servers of the node
// pod's containers (the pv-lister).
func UnixTransport(path string) *http.Transport {
	return &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}
}
