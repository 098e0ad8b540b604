package storage

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

const testHash = "0123456789abcdef0123456789abcdef"

// TestDataDirHash: start-up recovery takes a bind mount for a publication only when
// its root is exactly volumes/<hash>/data of the pool.
func TestDataDirHash(t *testing.T) {
	for _, tc := range []struct {
		name, root, mountRoot string
		want                  string
	}{
		{"data dir", "/srv/pool/volumes", "/srv/pool/volumes/" + testHash + "/data", testHash},
		{"volumes at the filesystem root", "/", "/" + testHash + "/data", testHash},
		{"deeper inside the data", "/srv/pool/volumes", "/srv/pool/volumes/" + testHash + "/data/sub", ""},
		{"the volume dir itself", "/srv/pool/volumes", "/srv/pool/volumes/" + testHash, ""},
		{"another pool", "/srv/pool/volumes", "/srv/other/volumes/" + testHash + "/data", ""},
		{"not a hash", "/srv/pool/volumes", "/srv/pool/volumes/" + "XYZ" + testHash[3:] + "/data", ""},
		{"short hash", "/srv/pool/volumes", "/srv/pool/volumes/abc/data", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := dataDirHash(tc.root, tc.mountRoot)
			if got != tc.want || ok != (tc.want != "") {
				t.Errorf("dataDirHash(%q, %q) = %q, %t; want %q", tc.root, tc.mountRoot, got, ok, tc.want)
			}
		})
	}
}

// TestImageHash: a loop device belongs to a volume only when its backing file is
// .../volumes/<hash>/image, deleted or not.
func TestImageHash(t *testing.T) {
	for _, tc := range []struct {
		name, backing, want string
	}{
		{"image", "/srv/pool/volumes/" + testHash + "/image", testHash},
		{"deleted image", "/srv/pool/volumes/" + testHash + "/image (deleted)", testHash},
		{"through another path to the pool", "/real/pool/volumes/" + testHash + "/image", testHash},
		{"a snapshot's image", "/srv/pool/snapshots/" + testHash + "/image", ""},
		{"another file", "/srv/pool/volumes/" + testHash + "/record.json", ""},
		{"not a hash", "/srv/pool/volumes/notahash/image", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := imageHash(tc.backing)
			if got != tc.want || ok != (tc.want != "") {
				t.Errorf("imageHash(%q) = %q, %t; want %q", tc.backing, got, ok, tc.want)
			}
		})
	}
}

// TestCodedError: an engine error matches its sentinel and what it wraps, and its
// message is its own.
func TestCodedError(t *testing.T) {
	inner := errors.New("EIO")
	err := errorf(ErrNotStaged, "volume %s is not staged: %w", "v", inner)
	if !errors.Is(err, ErrNotStaged) || !errors.Is(err, inner) || errors.Is(err, ErrPrecondition) {
		t.Errorf("errors.Is: sentinel %t, inner %t, other %t", errors.Is(err, ErrNotStaged), errors.Is(err, inner), errors.Is(err, ErrPrecondition))
	}
	if got, want := err.Error(), "volume v is not staged: EIO"; got != want {
		t.Errorf("message %q, want %q", got, want)
	}
}

// FuzzRecoveryPaths: start-up recovery maps a mount's root (from mountinfo) or a loop
// device's backing file (from sysfs) to a volume only when the path is exactly that
// volume's data directory or image; and every such path is recognised.
func FuzzRecoveryPaths(f *testing.F) {
	f.Add("/srv/pool/volumes", "/srv/pool/volumes/"+testHash+"/data", "/srv/pool/volumes/"+testHash+"/image")
	f.Add("/", "/"+testHash+"/data", "/srv/pool/volumes/"+testHash+"/image (deleted)")
	f.Add("/srv/pool/volumes/", "/srv/pool/volumes//"+testHash+"/data/", "volumes/"+testHash+"/image")
	f.Add("/v", "/v/"+testHash+"/data/x", "/srv/pool/volumes/../volumes/"+testHash+"/./image")
	f.Fuzz(func(t *testing.T, root, mountRoot, backing string) {
		if filepath.IsAbs(root) {
			root = filepath.Clean(root) // as RecoverPublications passes it
			if h, ok := dataDirHash(root, mountRoot); ok {
				if len(h) != hashLen || !isLowerHex(h) || mountRoot != strings.TrimSuffix(root, "/")+"/"+h+"/"+DataDir {
					t.Fatalf("dataDirHash(%q, %q) = %q", root, mountRoot, h)
				}
			}
			h := nameHash("fuzz", mountRoot)
			if got, ok := dataDirHash(root, filepath.Join(root, h, DataDir)); !ok || got != h {
				t.Fatalf("dataDirHash(%q) misses the data directory of %s: %q, %t", root, h, got, ok)
			}
		}
		if h, ok := imageHash(backing); ok {
			clean := filepath.Clean(strings.TrimSuffix(backing, " (deleted)"))
			want := volumesDir + "/" + h + "/" + ImageFile
			if len(h) != hashLen || !isLowerHex(h) || clean != want && !strings.HasSuffix(clean, "/"+want) {
				t.Fatalf("imageHash(%q) = %q", backing, h)
			}
		}
		if filepath.IsAbs(backing) {
			h := nameHash("fuzz", backing)
			image := filepath.Join(backing, volumesDir, h, ImageFile)
			for _, b := range []string{image, image + " (deleted)"} {
				if got, ok := imageHash(b); !ok || got != h {
					t.Fatalf("imageHash(%q) = %q, %t; want %s", b, got, ok, h)
				}
			}
		}
	})
}
