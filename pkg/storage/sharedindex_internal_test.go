package storage

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestKeepRecent: a rescan of a shared pool keeps what this process committed while
// the scan ran and drops what it deleted meanwhile; the cache's lock makes the
// directory check and the swap one step.
func TestKeepRecent(t *testing.T) {
	root := t.TempDir()
	dir := func(h string) string { return filepath.Join(root, h) }
	for _, h := range []string{"committed-during-scan", "created-elsewhere", "in-both"} {
		if err := os.Mkdir(dir(h), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	old := map[string]int{
		"committed-during-scan": 1, // in the cache, missed by the scan, on disk
		"deleted-elsewhere":     2, // in the cache, not on disk: gone
		"in-both":               3,
	}
	scanned := map[string]int{
		"created-elsewhere":   4, // new from the scan, on disk
		"deleted-during-scan": 5, // seen by the scan, deleted since (not in the cache, not on disk)
		"in-both":             6,
	}
	keepRecent(old, scanned, dir)
	var got []string
	for h := range scanned {
		got = append(got, h)
	}
	slices.Sort(got)
	want := []string{"committed-during-scan", "created-elsewhere", "in-both"}
	if !slices.Equal(got, want) {
		t.Errorf("after keepRecent: %v, want %v", got, want)
	}
	if scanned["in-both"] != 6 {
		t.Errorf("an entry in both took the cache's value %d, want the scan's 6", scanned["in-both"])
	}
}
