package quota

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestSetProject(t *testing.T) {
	// Project IDs need no quota enforcement: plain xfs carries them, and ext4
	// needs the project feature (whose quota files need CONFIG_QFMT_V2).
	for _, spec := range []fsSpec{xfsPlain, ext4Prj} {
		t.Run(spec.name, func(t *testing.T) {
			mnt := mountFS(t, spec)
			vol := mkdir(t, mnt, "vol")
			old := mkdir(t, vol, "old")
			if got, err := Project(vol); err != nil || got != 0 {
				t.Fatalf("Project of a new directory = %d, %v; want 0, nil", got, err)
			}
			if err := SetProject(vol, 42); err != nil {
				t.Fatalf("SetProject: %v", err)
			}
			wantProject(t, vol, 42)
			if err := SetProject(vol, 42); err != nil {
				t.Fatalf("SetProject again with the same ID: %v", err)
			}
			// New entries inherit the ID, and new directories the inherit flag.
			deep := mkdir(t, mkdir(t, vol, "sub"), "deeper")
			if err := os.WriteFile(filepath.Join(deep, "file"), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			wantProject(t, filepath.Join(vol, "sub"), 42)
			wantProject(t, deep, 42)
			// Entries that existed before keep their ID.
			wantProject(t, old, 0)
			// Moving an entry across projects is refused, so tools copy.
			if err := os.Rename(old, filepath.Join(deep, "moved")); !errors.Is(err, unix.EXDEV) {
				t.Errorf("rename into another project = %v, want EXDEV", err)
			}
			if err := SetProject(vol, 43); err != nil {
				t.Fatalf("SetProject to another ID: %v", err)
			}
			wantProject(t, vol, 43)
			wantProject(t, deep, 42)
		})
	}
}

func TestSetProjectRefuses(t *testing.T) {
	root := t.TempDir()
	dir := mkdir(t, root, "dir")
	file := filepath.Join(root, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(root, "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path string
		wantErr    error
	}{
		// O_NOFOLLOW with O_DIRECTORY makes a trailing symlink ENOTDIR, not ELOOP.
		{"a symlink to a directory", link, unix.ENOTDIR},
		{"a regular file", file, unix.ENOTDIR},
		{"a missing path", filepath.Join(root, "missing"), unix.ENOENT},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := SetProject(tc.path, 7); !errors.Is(err, tc.wantErr) {
				t.Errorf("SetProject(%s) = %v, want %v", tc.path, err, tc.wantErr)
			}
			if _, err := Project(tc.path); !errors.Is(err, tc.wantErr) {
				t.Errorf("Project(%s) = %v, want %v", tc.path, err, tc.wantErr)
			}
		})
	}
}

func TestSetProjectExt4WithoutFeature(t *testing.T) {
	dir := mkdir(t, mountFS(t, ext4NoFeat), "vol")
	err := SetProject(dir, 42)
	if !errors.Is(err, unix.EOPNOTSUPP) {
		t.Fatalf("SetProject on ext4 without the project feature = %v, want EOPNOTSUPP", err)
	}
	wantProject(t, dir, 0)
	// ID 0 is all such a filesystem has, so setting it is no change.
	if err := SetProject(dir, 0); err != nil {
		t.Errorf("SetProject(0) on ext4 without the project feature = %v, want nil", err)
	}
}

// mkdir creates dir/name and returns its path.
func mkdir(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// wantProject fails the test unless dir has project ID id.
func wantProject(t *testing.T, dir string, id uint32) {
	t.Helper()
	if got, err := Project(dir); err != nil || got != id {
		t.Errorf("Project(%s) = %d, %v; want %d, nil", dir, got, err, id)
	}
}

func TestSetFileProject(t *testing.T) {
	for _, spec := range []fsSpec{xfsPlain, ext4Prj} {
		t.Run(spec.name, func(t *testing.T) {
			mnt := mountFS(t, spec)
			dir := mkdir(t, mnt, "dir")
			file := filepath.Join(mnt, "file")
			if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				path    string
				id      uint32
				inherit bool
			}{
				{dir, 7, true}, {dir, 7, false}, {dir, 0, true}, {file, 9, false}, {file, 0, false},
			} {
				fd, err := unix.Open(tc.path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				if err := SetFileProject(fd, tc.id, tc.inherit); err != nil {
					t.Fatalf("SetFileProject(%s, %d, %v): %v", tc.path, tc.id, tc.inherit, err)
				}
				id, inherit, err := FileProject(fd)
				unix.Close(fd)
				if err != nil || id != tc.id || inherit != tc.inherit {
					t.Fatalf("FileProject(%s) = %d, %v, %v; want %d, %v", tc.path, id, inherit, err, tc.id, tc.inherit)
				}
			}
			// The ioctls need an open file: an O_PATH fd is refused.
			fd, err := unix.Open(file, unix.O_PATH|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if _, _, err := FileProject(fd); !errors.Is(err, unix.EBADF) {
				t.Fatalf("FileProject of an O_PATH fd: %v, want EBADF", err)
			}
		})
	}
}
