// Package testutil holds helpers shared by Berth's tests.
package testutil

import (
	"os"
	"testing"
)

// RequireRoot skips a test that needs root (mounts, loop devices) when not run as root,
// and fails it instead when BERTH_REQUIRE_ROOT=1 (CI), so CI can never skip silently.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("BERTH_REQUIRE_ROOT") == "1" {
		t.Fatal("this test needs root (mounts), and BERTH_REQUIRE_ROOT=1 forbids skipping it")
	}
	t.Skip("needs root for real mounts; run as root (CI does)")
}

// ShortTempDir returns a fresh directory with a short path, for unix sockets (whose
// paths are limited to 107 bytes, which t.TempDir() can exceed). Removed at cleanup.
func ShortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "berth")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
