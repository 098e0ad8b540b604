// Package server runs Berth's CSI gRPC services on a unix socket: it parses the
// endpoint, creates the listener safely, wraps every call in the interceptor chain
// (request IDs, sanitised logging, panic recovery, error-code hygiene) and stops
// gracefully when its context ends.
package server

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// maxSocketPathLen is the longest path a unix socket can be bound to on Linux:
// sockaddr_un.sun_path is 108 bytes and must hold the terminating NUL.
const maxSocketPathLen = 107

// ParseEndpoint turns a CSI endpoint into the absolute path of its unix socket.
// It accepts "unix:///abs/path", "unix:/abs/path" and "/abs/path"; any other
// scheme, a relative path, an empty endpoint or a path longer than the sun_path
// limit is an error.
func ParseEndpoint(ep string) (string, error) {
	if ep == "" {
		return "", errors.New("endpoint is empty")
	}
	path := ep
	switch {
	case strings.HasPrefix(ep, "unix://"):
		path = strings.TrimPrefix(ep, "unix://")
	case strings.HasPrefix(ep, "unix:"):
		path = strings.TrimPrefix(ep, "unix:")
	case strings.Contains(ep, "://"):
		scheme, _, _ := strings.Cut(ep, "://")
		return "", fmt.Errorf("endpoint %q: unsupported scheme %q (only unix sockets are served)", ep, scheme)
	}
	if err := checkSocketPath(path); err != nil {
		return "", fmt.Errorf("endpoint %q: %w", ep, err)
	}
	return filepath.Clean(path), nil
}

// checkSocketPath reports why path cannot name a socket Listen may create.
func checkSocketPath(path string) error {
	if path == "" {
		return errors.New("socket path is empty")
	}
	if strings.IndexByte(path, 0) >= 0 {
		return errors.New("socket path contains a NUL byte")
	}
	if !filepath.IsAbs(path) {
		return fmt.Errorf("socket path %q is not absolute", path)
	}
	clean := filepath.Clean(path)
	if clean == "/" {
		return errors.New("socket path is the root directory")
	}
	if len(clean) > maxSocketPathLen {
		return fmt.Errorf("socket path %q is %d bytes, longer than the %d-byte unix socket limit",
			clean, len(clean), maxSocketPathLen)
	}
	return nil
}
