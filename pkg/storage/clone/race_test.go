package clone

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"golang.org/x/sys/unix"
)

// A pod swaps entries while a copy runs: a directory for a symlink to host
// data, a regular file for a fifo. Whatever the interleaving, a copy never
// holds host data, never blocks, and the host data stays as it was. A copy
// may fail (an entry listed twice, say); the caller then discards it.
func TestTreeSwapRace(t *testing.T) {
	testutil.RequireRoot(t)
	base := t.TempDir()
	src, host := filepath.Join(base, "vol"), filepath.Join(base, "host")
	writeFile(t, filepath.Join(host, "secret"), "host data")
	for i := range 20 {
		writeFile(t, filepath.Join(src, "sub", "f"+strconv.Itoa(i)), "vol data")
	}
	if err := os.Symlink(host, filepath.Join(src, "sublink")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(src, "file"), "vol data")
	if err := unix.Mkfifo(filepath.Join(src, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var swaps atomic.Int64
	for _, pair := range [][2]string{{"sub", "sublink"}, {"file", "fifo"}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, b := filepath.Join(src, pair[0]), filepath.Join(src, pair[1])
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE); err != nil {
					t.Errorf("exchange %s: %v", pair, err)
					return
				}
				swaps.Add(1)
			}
		}()
	}
	var failed int
	kinds := make(map[fs.FileMode]int) // what "sub" was in each copy
	deadline := time.Now().Add(2 * time.Second)
	for i := 0; time.Now().Before(deadline) || i < 20; i++ {
		name := "copy" + strconv.Itoa(i)
		_, err := within(t, treeTimeout, func() (Stats, error) {
			return Tree(context.Background(), src, base, name, Options{})
		})
		if err != nil {
			failed++
		}
		checkNoHostData(t, filepath.Join(base, name))
		if fi, err := os.Lstat(filepath.Join(base, name, "sub")); err == nil {
			kinds[fi.Mode().Type()]++
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d swaps; %d copies failed; sub copied as %v", swaps.Load(), failed, kinds)
	assertContent(t, filepath.Join(host, "secret"), "host data")
	if ents, _ := os.ReadDir(host); len(ents) != 1 {
		t.Errorf("host directory holds %d entries, want 1", len(ents))
	}
}

// checkNoHostData fails if any file under dir (not following symlinks) holds
// the host's data.
func checkNoHostData(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if string(b) == "host data" || d.Name() == "secret" {
			t.Errorf("%s: host data in the copy", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
