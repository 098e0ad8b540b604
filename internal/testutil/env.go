package testutil

import (
	"os"
	"strconv"
	"testing"
)

// EnvInt reads a count from the environment variable key: def when it is unset, and
// the test fails when it is not an integer of at least least.
func EnvInt(t testing.TB, key string, def, least int) int {
	t.Helper()
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < least {
		t.Fatalf("%s=%q: want an integer of at least %d", key, v, least)
	}
	return n
}
