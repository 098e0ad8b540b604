package meta

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestWriteFile(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir, outside string) // may create dir/"rec"
		data    string
		wantErr bool
	}{
		{name: "new file", data: `{"a":1}`},
		{name: "empty content", data: ""},
		{name: "replaces a 0644 file", data: "new", setup: func(t *testing.T, dir, _ string) {
			mustWrite(t, filepath.Join(dir, "rec"), "old old old", 0o644)
		}},
		{name: "replaces a read-only file", data: "new", setup: func(t *testing.T, dir, _ string) {
			mustWrite(t, filepath.Join(dir, "rec"), "old", 0o400)
		}},
		{name: "replaces a symlink, not its target", data: "new", setup: func(t *testing.T, dir, outside string) {
			if err := os.Symlink(filepath.Join(outside, "host"), filepath.Join(dir, "rec")); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "leaves other entries alone", data: "new", setup: func(t *testing.T, dir, _ string) {
			mustWrite(t, filepath.Join(dir, ".other.tmp1"), "other", 0o600)
			mustWrite(t, filepath.Join(dir, "zzz"), "other", 0o600)
		}},
		{name: "target is a directory", data: "new", wantErr: true, setup: func(t *testing.T, dir, _ string) {
			if err := os.Mkdir(filepath.Join(dir, "rec"), 0o700); err != nil {
				t.Fatal(err)
			}
			mustWrite(t, filepath.Join(dir, "rec", "inner"), "x", 0o600)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir, outside := t.TempDir(), t.TempDir()
			mustWrite(t, filepath.Join(outside, "host"), "host data", 0o644)
			if tc.setup != nil {
				tc.setup(t, dir, outside)
			}
			before := entries(t, dir)
			err := WriteFile(dir, "rec", []byte(tc.data))
			if (err != nil) != tc.wantErr {
				t.Fatalf("WriteFile: %v, want error %v", err, tc.wantErr)
			}
			assertContent(t, filepath.Join(outside, "host"), "host data")
			if tc.wantErr {
				if got := entries(t, dir); !slices.Equal(got, before) {
					t.Fatalf("failed WriteFile left %s, had %s", got, before)
				}
				return
			}
			assertContent(t, filepath.Join(dir, "rec"), tc.data)
			fi, err := os.Lstat(filepath.Join(dir, "rec"))
			if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
				t.Fatalf("rec: mode %v (%v), want a regular 0600 file", fi.Mode(), err)
			}
			want := before
			if !slices.Contains(before, "rec") {
				want = append(want, "rec")
				slices.Sort(want)
			}
			if got := entries(t, dir); !slices.Equal(got, want) {
				t.Fatalf("directory holds %q, want %q (no temp file left)", got, want)
			}
		})
	}
}

func TestWriteFileMissingDir(t *testing.T) {
	err := WriteFile(filepath.Join(t.TempDir(), "absent"), "rec", []byte("x"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("WriteFile into a missing directory: %v, want ErrNotExist", err)
	}
}

// Many writers replacing one file concurrently: every write succeeds, the result is one
// of the complete contents, and no temp file is left.
func TestWriteFileConcurrent(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			if err := WriteFile(dir, "rec", bytes.Repeat([]byte{byte('a' + i)}, 4096)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	data, err := os.ReadFile(filepath.Join(dir, "rec"))
	if err != nil || len(data) != 4096 || bytes.Count(data, data[:1]) != 4096 {
		t.Fatalf("rec after concurrent writes: %d bytes, torn or missing (%v)", len(data), err)
	}
	if got := entries(t, dir); !slices.Equal(got, []string{"rec"}) {
		t.Fatalf("directory holds %q", got)
	}
}

func TestWriteNew(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, path, outside string)
		wantErr error // nil: success
	}{
		{name: "new file"},
		{name: "existing file", wantErr: os.ErrExist, setup: func(t *testing.T, path, _ string) {
			mustWrite(t, path, "old", 0o600)
		}},
		{name: "dangling symlink", wantErr: os.ErrExist, setup: func(t *testing.T, path, outside string) {
			if err := os.Symlink(filepath.Join(outside, "absent"), path); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "symlink to a file", wantErr: os.ErrExist, setup: func(t *testing.T, path, outside string) {
			if err := os.Symlink(filepath.Join(outside, "host"), path); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "missing directory", wantErr: os.ErrNotExist, setup: func(t *testing.T, path, _ string) {
			if err := os.Remove(filepath.Dir(path)); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path, outside := filepath.Join(t.TempDir(), "rec"), t.TempDir()
			mustWrite(t, filepath.Join(outside, "host"), "host data", 0o644)
			if tc.setup != nil {
				tc.setup(t, path, outside)
			}
			err := WriteNew(path, []byte("new"))
			assertContent(t, filepath.Join(outside, "host"), "host data")
			if _, serr := os.Stat(filepath.Join(outside, "absent")); !errors.Is(serr, os.ErrNotExist) {
				t.Fatal("WriteNew created a file through a symlink")
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("WriteNew: %v, want %v", err, tc.wantErr)
				}
				if tc.name == "existing file" {
					assertContent(t, path, "old")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			assertContent(t, path, "new")
			if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("mode %v (%v), want 0600", fi.Mode(), err)
			}
		})
	}
}

func TestSyncDir(t *testing.T) {
	dir := t.TempDir()
	mustWrite(t, filepath.Join(dir, "file"), "x", 0o600)
	tests := []struct {
		name, path string
		wantErr    error // nil: success; errAny: some error
	}{
		{name: "directory", path: dir},
		{name: "missing", path: filepath.Join(dir, "absent"), wantErr: os.ErrNotExist},
		{name: "regular file", path: filepath.Join(dir, "file"), wantErr: errAny},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := SyncDir(tc.path)
			if (err != nil) != (tc.wantErr != nil) || tc.wantErr != errAny && tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("SyncDir(%s): %v, want %v", tc.path, err, tc.wantErr)
			}
		})
	}
}

var errAny = errors.New("any error")

// fsyncs is the number of fsyncs s has started (white-box: the generation counter).
func fsyncs(s *DirSyncer) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running || s.done != s.started {
		panic("fsyncs called while an fsync is running")
	}
	return s.started
}

func TestDirSyncerSequential(t *testing.T) {
	s := NewDirSyncer(t.TempDir())
	for i := range 10 {
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
		// With no fsync running, each call needs one of its own.
		if got := fsyncs(s); got != uint64(i+1) {
			t.Fatalf("after %d sequential calls: %d fsyncs", i+1, got)
		}
	}
}

// Callers arriving while an fsync runs all wait for the next one, and that single fsync
// answers them all. The running fsync is simulated (its flag is raised by hand) so that
// the test can hold it open until every caller is waiting.
func TestDirSyncerSharesOneFsync(t *testing.T) {
	const callers = 64
	s := NewDirSyncer(t.TempDir())
	s.mu.Lock()
	s.running, s.started = true, 1 // generation 1 "in flight": may have missed the callers' changes
	s.mu.Unlock()
	errs := make(chan error, callers)
	for range callers {
		go func() { errs <- s.Sync() }()
	}
	waitForWaiters(t, callers)
	s.mu.Lock()
	s.running, s.done = false, 1
	s.cond.Broadcast()
	s.mu.Unlock()
	for range callers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := fsyncs(s); got != 2 {
		t.Fatalf("%d callers waiting on a running fsync caused %d more fsyncs, want 1", callers, got-1)
	}
}

// waitForWaiters polls the goroutine dump until n goroutines wait inside Sync.
func waitForWaiters(t *testing.T, n int) {
	t.Helper()
	buf := make([]byte, 1<<22)
	deadline := time.Now().Add(10 * time.Second)
	for {
		dump := string(buf[:runtime.Stack(buf, true)])
		waiting := 0
		for _, g := range strings.Split(dump, "\n\n") {
			if strings.Contains(g, "sync.(*Cond).Wait") && strings.Contains(g, "(*DirSyncer).Sync") {
				waiting++
			}
		}
		if waiting == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d callers waiting after 10s", waiting, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// 64 goroutines x 50 calls: all succeed, no race, never more fsyncs than calls.
func TestDirSyncerConcurrent(t *testing.T) {
	const goroutines, calls = 64, 50
	s := NewDirSyncer(t.TempDir())
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for range calls {
				if err := s.Sync(); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	n := fsyncs(s)
	if n == 0 || n > goroutines*calls {
		t.Fatalf("%d fsyncs for %d calls", n, goroutines*calls)
	}
	t.Logf("%d calls, %d fsyncs", goroutines*calls, n)
}

// An fsync error reaches exactly the callers that fsync covered; later calls succeed
// once the directory is back.
func TestDirSyncerError(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vols")
	s := NewDirSyncer(dir)
	if err := s.Sync(); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Sync of a missing directory: %v, want ErrNotExist", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := s.Sync(); err != nil {
			t.Fatalf("Sync after the directory appeared: %v", err)
		}
	}
}

func BenchmarkSyncDir(b *testing.B) {
	dir := benchDir(b)
	for b.Loop() {
		if err := SyncDir(dir); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDirSyncerParallel: compare ns/op with BenchmarkSyncDir; fsyncs/op below 1
// is the share of calls that rode on another caller's fsync.
func BenchmarkDirSyncerParallel(b *testing.B) {
	s := NewDirSyncer(benchDir(b))
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := s.Sync(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(fsyncs(s))/float64(b.N), "fsyncs/op")
}

// benchDir is a directory on a real disk (/var/tmp), not tmpfs, removed at the end.
func benchDir(b *testing.B) string {
	dir, err := os.MkdirTemp("/var/tmp", "berth-meta-bench-")
	if err != nil {
		b.Skip(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func mustWrite(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

func assertContent(t *testing.T, path, want string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil || string(got) != want {
		t.Fatalf("%s: %q, %v; want %q", path, got, err, want)
	}
}

// entries lists dir's names, sorted.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{}
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}
