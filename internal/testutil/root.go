// Package testutil holds helpers shared by Berth's tests, the root-only ones among
// them (real mounts, loop devices, filesystems made in files).
package testutil

import (
	"os"
	"testing"
)

// RequireRoot skips a test that needs root (mounts, loop devices) when not run as
// root, and fails it instead in CI (CI=true, as .ci/run runs) or when
// BERTH_REQUIRE_ROOT=1, so a CI run can never pass by skipping what it must test.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if mustRunAsRoot() {
		t.Fatal("this test needs root (mounts, loop devices), and CI=true or BERTH_REQUIRE_ROOT=1 forbids skipping it")
	}
	t.Skip("needs root for real mounts; run as root (CI does)")
}

// mustRunAsRoot reports whether root-only tests may not skip here.
func mustRunAsRoot() bool {
	return os.Getenv("CI") == "true" || os.Getenv("BERTH_REQUIRE_ROOT") == "1"
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
