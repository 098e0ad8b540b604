package storage

import (
	"errors"
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
