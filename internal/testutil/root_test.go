package testutil

import "testing"

// TestMustRunAsRoot: CI=true alone forbids skipping root-only tests; so does
// BERTH_REQUIRE_ROOT=1; neither set lets a contributor's non-root run skip them.
func TestMustRunAsRoot(t *testing.T) {
	for _, tc := range []struct {
		name, ci, require string
		want              bool
	}{
		{"CI", "true", "", true},
		{"BERTH_REQUIRE_ROOT", "", "1", true},
		{"neither", "", "", false},
		{"CI=false", "false", "0", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			t.Setenv("BERTH_REQUIRE_ROOT", tc.require)
			if got := mustRunAsRoot(); got != tc.want {
				t.Errorf("mustRunAsRoot() = %t, want %t", got, tc.want)
			}
		})
	}
}
