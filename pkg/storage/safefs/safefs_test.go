package safefs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-csi/berth/internal/testutil"
)

// writeFile creates path (and its parents) with content, fsynced so its
// blocks are allocated when the test reads st_blocks.
func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// assertContent fails unless path is a regular file holding want.
func assertContent(t testing.TB, path, want string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("outside file %s: %v", path, err)
	}
	if string(got) != want {
		t.Fatalf("outside file %s = %q, want %q", path, got, want)
	}
}

// within runs f and fails the test if it has not returned after d, so a walk
// that blocks opening a fifo fails instead of hanging the suite.
func within(t testing.TB, d time.Duration, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("still running after %v", d)
		return nil
	}
}

// bindMount bind-mounts src on dst and detaches it when the test ends, even
// if it fails.
func bindMount(t testing.TB, src, dst string) {
	t.Helper()
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount %s on %s: %v", src, dst, err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dst, unix.MNT_DETACH) })
}

// withFileLimit lowers the soft RLIMIT_NOFILE to n for the rest of the test.
func withFileLimit(t testing.TB, n uint64) {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = n
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
			t.Errorf("restore RLIMIT_NOFILE: %v", err)
		}
	})
}

// openFDs counts this process's open fds.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// makeDeep creates depth nested directories named "d" under root, calling
// level (if not nil) with an fd on each new directory and its depth.
// Relative *at calls keep it independent of PATH_MAX.
func makeDeep(t testing.TB, root string, depth int, level func(fd, i int)) {
	t.Helper()
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= depth; i++ {
		if err := unix.Mkdirat(fd, "d", 0o755); err != nil {
			unix.Close(fd)
			t.Fatalf("mkdir level %d: %v", i, err)
		}
		next, err := unix.Openat(fd, "d", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatalf("open level %d: %v", i, err)
		}
		fd = next
		if level != nil {
			level(fd, i)
		}
	}
	unix.Close(fd)
}

func TestOpenBeneath(t *testing.T) {
	testutil.RequireRoot(t)
	outside := t.TempDir()
	writeFile(t, filepath.Join(outside, "secret"), "host")
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "a", "b", "file"), "data")
	for _, l := range []struct{ target, name string }{
		{"a", "lnk"},
		{filepath.Join(outside, "secret"), "a/b/abs"},
		{"file", "a/b/flink"},
		{"../../..", "a/b/up"},
	} {
		if err := os.Symlink(l.target, filepath.Join(root, l.name)); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name    string
		rel     string
		flags   int
		wantErr error // nil: must open
		want    string
	}{
		{name: "file", rel: "a/b/file", flags: unix.O_RDONLY, want: "data"},
		{name: "dot components", rel: "./a/./b/file", flags: unix.O_RDONLY, want: "data"},
		{name: "dotdot staying beneath", rel: "a/../a/b/file", flags: unix.O_RDONLY, want: "data"},
		{name: "directory as O_PATH", rel: "a/b", flags: unix.O_PATH | unix.O_DIRECTORY},
		{name: "directory", rel: "a", flags: unix.O_RDONLY | unix.O_DIRECTORY},
		{name: "dotdot escape", rel: "../x", flags: unix.O_RDONLY, wantErr: unix.EXDEV},
		{name: "nested dotdot escape", rel: "a/../../x", flags: unix.O_RDONLY, wantErr: unix.EXDEV},
		{name: "absolute path", rel: filepath.Join(outside, "secret"), flags: unix.O_RDONLY, wantErr: unix.EXDEV},
		{name: "symlinked component", rel: "lnk/b/file", flags: unix.O_RDONLY, wantErr: unix.ELOOP},
		{name: "final symlink", rel: "a/b/flink", flags: unix.O_RDONLY, wantErr: unix.ELOOP},
		{name: "final symlink as O_PATH", rel: "a/b/flink", flags: unix.O_PATH, wantErr: unix.ELOOP},
		{name: "absolute symlink out", rel: "a/b/abs", flags: unix.O_RDONLY, wantErr: unix.ELOOP},
		{name: "relative symlink up and out", rel: "a/b/up/x", flags: unix.O_RDONLY, wantErr: unix.ELOOP},
		{name: "missing", rel: "a/nope", flags: unix.O_RDONLY, wantErr: os.ErrNotExist},
		{name: "file as directory", rel: "a/b/file", flags: unix.O_RDONLY | unix.O_DIRECTORY, wantErr: unix.ENOTDIR},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := OpenBeneath(root, tc.rel, tc.flags)
			if tc.wantErr != nil {
				if err == nil {
					f.Close()
					t.Fatalf("OpenBeneath(%q) succeeded, want %v", tc.rel, tc.wantErr)
				}
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("OpenBeneath(%q) = %v, want errors.Is %v", tc.rel, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("OpenBeneath(%q): %v", tc.rel, err)
			}
			defer f.Close()
			if tc.want != "" {
				got, err := io.ReadAll(f)
				if err != nil || string(got) != tc.want {
					t.Fatalf("read %q = %q, %v; want %q", tc.rel, got, err, tc.want)
				}
			}
		})
	}
	assertContent(t, filepath.Join(outside, "secret"), "host")
}

func TestOpenBeneathCreate(t *testing.T) {
	testutil.RequireRoot(t)
	root := t.TempDir()
	f, err := OpenBeneath(root, "new", unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	fi, err := os.Lstat(filepath.Join(root, "new"))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&^0o600 != 0 {
		t.Fatalf("created with mode %v, want at most 0600", perm)
	}
	if f, err := OpenBeneath(root, "../escape", unix.O_WRONLY|unix.O_CREAT); err == nil {
		f.Close()
		t.Fatal("created a file outside root")
	}
}

func BenchmarkRemoveTree(b *testing.B) {
	base := b.TempDir()
	build := func(name string) {
		for d := range 10 {
			dir := filepath.Join(base, name, fmt.Sprintf("dir%d", d))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				b.Fatal(err)
			}
			for f := range 100 {
				if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d", f)), []byte("x"), 0o644); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		name := fmt.Sprintf("vol%d", i)
		build(name)
		b.StartTimer()
		if err := RemoveTree(base, name); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if ents, _ := os.ReadDir(base); len(ents) != 0 {
		b.Fatalf("left %d entries", len(ents))
	}
}

// TestOpenBeneathOneFS: a directory bind-mounted below root is reached by
// OpenBeneath, and refused with EXDEV by OpenBeneathOneFS, as a path through it.
func TestOpenBeneathOneFS(t *testing.T) {
	testutil.RequireRoot(t)
	outside := t.TempDir()
	writeFile(t, filepath.Join(outside, "secret"), "host")
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "plain", "file"), "data")
	if err := os.Mkdir(filepath.Join(root, "bound"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(outside, filepath.Join(root, "bound"), "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testutil.UnmountTree(t, filepath.Join(root, "bound")) })

	for _, rel := range []string{"plain", "plain/file"} {
		f, err := OpenBeneathOneFS(root, rel, unix.O_PATH)
		if err != nil {
			t.Fatalf("OpenBeneathOneFS(%q): %v", rel, err)
		}
		f.Close()
	}
	for _, rel := range []string{"bound", "bound/secret"} {
		if f, err := OpenBeneathOneFS(root, rel, unix.O_PATH); !errors.Is(err, unix.EXDEV) {
			if err == nil {
				f.Close()
			}
			t.Fatalf("OpenBeneathOneFS(%q) = %v, want EXDEV", rel, err)
		}
		f, err := OpenBeneath(root, rel, unix.O_PATH)
		if err != nil {
			t.Fatalf("OpenBeneath(%q) crossing the mount: %v", rel, err)
		}
		f.Close()
	}
}
