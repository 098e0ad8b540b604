package storage_test

import (
	"errors"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/berth-csi/berth/pkg/storage"
)

const (
	pvcName = "pvc-0f2c6a1e-4b7d-4e55-9a3c-2d1f0e8b7c6a"
	// pvcHash is sha256("volume\x00" + pvcName)[:16] in hex, computed outside Go. IDs are
	// stored in PersistentVolumes, so the derivation must never change within "b1".
	pvcHash = "3b26aad38065a2bc235d6fa655f32f71"
)

func TestVolumeIDIsStableAndParses(t *testing.T) {
	tests := []struct {
		name, pool, volName string
		wantID              string // "" when only the round trip is checked
	}{
		{name: "golden", pool: "default", volName: pvcName, wantID: "b1-default-" + pvcHash},
		{name: "golden ephemeral", pool: "default", volName: storage.EphemeralName("csi-abc"),
			wantID: "b1-default-e6a9ce52b81d6aebb41684f9ce312551"},
		{name: "pool with dashes", pool: "my-pool", volName: pvcName, wantID: "b1-my-pool-" + pvcHash},
		{name: "longest pool", pool: strings.Repeat("p", 32), volName: "a"},
		{name: "one-letter name", pool: "a", volName: "a"},
		{name: "uppercase name", pool: "fast-ssd", volName: "sanity-Node-3F5B1A2C"},
		{name: "longest name", pool: "default", volName: strings.Repeat("n", storage.MaxNameLen)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := storage.VolumeID(tc.pool, tc.volName)
			if again := storage.VolumeID(tc.pool, tc.volName); again != id {
				t.Fatalf("VolumeID not deterministic: %s then %s", id, again)
			}
			if tc.wantID != "" && id != tc.wantID {
				t.Fatalf("VolumeID = %s, want %s", id, tc.wantID)
			}
			got, err := storage.ParseVolumeID(id)
			if err != nil {
				t.Fatalf("ParseVolumeID(%s): %v", id, err)
			}
			if got.Pool != tc.pool || "b1-"+got.Pool+"-"+got.Hash != id {
				t.Fatalf("ParseVolumeID(%s) = %+v", id, got)
			}
		})
	}
}

func TestVolumeIDDistinguishes(t *testing.T) {
	ids := map[string]string{}
	for _, in := range [][2]string{
		{"default", "pvc-1"}, {"default", "pvc-2"}, {"other", "pvc-1"},
		{"default", "PVC-1"}, {"default", storage.EphemeralName("pvc-1")},
	} {
		id := storage.VolumeID(in[0], in[1])
		if prev, ok := ids[id]; ok {
			t.Fatalf("%v and %s share ID %s", in, prev, id)
		}
		ids[id] = in[0] + "/" + in[1]
	}
}

func TestParseVolumeIDRejects(t *testing.T) {
	hash := pvcHash
	tests := []struct{ name, id string }{
		{"empty", ""},
		{"prefix only", "b1-"},
		{"no prefix", "default-" + hash},
		{"bare hash", hash},
		{"wrong version", "b2-default-" + hash},
		{"uppercase prefix", "B1-default-" + hash},
		{"uppercase hex", "b1-default-" + strings.ToUpper(hash)},
		{"non-hex hash", "b1-default-" + hash[:31] + "g"},
		{"short hash", "b1-default-" + hash[:31]},
		{"long hash", "b1-default-" + hash + "0"},
		{"31 hex after pool", "b1-default-" + strings.Repeat("a", 31)},
		{"no separator before hash", "b1-default" + hash},
		{"empty pool", "b1--" + hash},
		{"uppercase pool", "b1-A-" + hash},
		{"pool leading dash", "b1--x-" + hash},
		{"pool trailing dash", "b1-x--" + hash},
		{"pool of 33 chars", "b1-" + strings.Repeat("a", 33) + "-" + hash},
		{"pool with slash", "b1-a/b-" + hash},
		{"pool dot-dot", "b1-..-" + hash},
		{"pool with NUL", "b1-a\x00b-" + hash},
		{"pool with space", "b1-a b-" + hash},
		{"NUL in hash", "b1-default-" + hash[:31] + "\x00"},
		{"NUL only", "\x00"},
		{"invalid UTF-8 pool", "b1-\xff\xfe-" + hash},
		{"invalid UTF-8", "\xff\xfe\xfd"},
		{"4 KiB pool", "b1-" + strings.Repeat("a", 4096) + "-" + hash},
		{"4 KiB junk", strings.Repeat("\xff", 4096)},
		{"trailing newline", "b1-default-" + hash + "\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := storage.ParseVolumeID(tc.id)
			if !errors.Is(err, storage.ErrInvalid) {
				t.Fatalf("ParseVolumeID(%q) = %+v, %v; want ErrInvalid", tc.id, got, err)
			}
			if msg := err.Error(); len(msg) > 512 {
				t.Fatalf("error message is %d bytes: hostile input is not truncated", len(msg))
			}
		})
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name, in string
		wantErr  error
	}{
		{"pvc name", pvcName, nil},
		{"csi-sanity name", "sanity-node-full-3F5B1A2C-8E0D4F16", nil},
		{"uppercase only", "ABC", nil},
		{"one character", "a", nil},
		{"inner dot underscore dash", "a.b_c-d", nil},
		{"253 bytes", strings.Repeat("a", 253), nil},
		{"empty", "", storage.ErrInvalid},
		{"254 bytes", strings.Repeat("a", 254), storage.ErrInvalid},
		{"4 KiB", strings.Repeat("a", 4096), storage.ErrInvalid},
		{"dot-dot", "..", storage.ErrInvalid},
		{"inner dot-dot", "a..b", storage.ErrInvalid},
		{"slash", "/", storage.ErrInvalid},
		{"inner slash", "a/b", storage.ErrInvalid},
		{"NUL", "a\x00b", storage.ErrInvalid},
		{"invalid UTF-8", "a\xffb", storage.ErrInvalid},
		{"valid non-ASCII", "volumé", storage.ErrInvalid},
		{"leading dot", ".hidden", storage.ErrInvalid},
		{"leading dash", "-a", storage.ErrInvalid},
		{"leading underscore", "_a", storage.ErrInvalid},
		{"colon", "a:b", storage.ErrInvalid},
		{"ephemeral name", storage.EphemeralName("csi-abc"), storage.ErrInvalid},
		{"space", "a b", storage.ErrInvalid},
		{"newline", "a\n", storage.ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkErr(t, storage.ValidateName(tc.in), tc.wantErr)
		})
	}
}

func TestValidatePoolName(t *testing.T) {
	tests := []struct {
		name, in string
		wantErr  error
	}{
		{"simple", "default", nil},
		{"inner dash", "fast-ssd", nil},
		{"digits", "0", nil},
		{"32 chars", strings.Repeat("a", 32), nil},
		{"empty", "", storage.ErrInvalid},
		{"33 chars", strings.Repeat("a", 33), storage.ErrInvalid},
		{"uppercase", "A", storage.ErrInvalid},
		{"leading dash", "-x", storage.ErrInvalid},
		{"trailing dash", "x-", storage.ErrInvalid},
		{"slash", "a/b", storage.ErrInvalid},
		{"dot-dot", "..", storage.ErrInvalid},
		{"underscore", "a_b", storage.ErrInvalid},
		{"NUL", "a\x00", storage.ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkErr(t, storage.ValidatePoolName(tc.in), tc.wantErr)
		})
	}
}

// FuzzParseVolumeID: ParseVolumeID never panics, rejects with ErrInvalid only, and
// accepts only strings that are exactly what VolumeID would produce for some pool.
func FuzzParseVolumeID(f *testing.F) {
	for _, s := range []string{
		"", "b1-", "b1-default-" + pvcHash, "b1-my-pool-" + pvcHash, "b1--" + pvcHash,
		"b1-a--" + pvcHash, "b2-default-" + pvcHash, "b1-default-" + strings.Repeat("a", 31),
		"b1-\xff-" + pvcHash, "b1-a\x00-" + pvcHash, storage.VolumeID("x", "y"),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		got, err := storage.ParseVolumeID(id)
		if err != nil {
			if !errors.Is(err, storage.ErrInvalid) {
				t.Fatalf("ParseVolumeID(%q): %v does not wrap ErrInvalid", id, err)
			}
			return
		}
		if "b1-"+got.Pool+"-"+got.Hash != id {
			t.Fatalf("ParseVolumeID(%q) = %+v does not round-trip", id, got)
		}
		if err := storage.ValidatePoolName(got.Pool); err != nil {
			t.Fatalf("ParseVolumeID(%q) accepted pool %q: %v", id, got.Pool, err)
		}
		if len(got.Hash) != 32 || strings.Trim(got.Hash, "0123456789abcdef") != "" {
			t.Fatalf("ParseVolumeID(%q) accepted hash %q", id, got.Hash)
		}
		again, err := storage.ParseVolumeID("b1-" + got.Pool + "-" + got.Hash)
		if err != nil || again != got {
			t.Fatalf("re-parse of %q = %+v, %v", id, again, err)
		}
		// Resolve checks an ID as a name before parsing it: a valid ID must pass.
		if err := storage.ValidateName(id); err != nil {
			t.Fatalf("ParseVolumeID(%q) accepts an ID ValidateName refuses: %v", id, err)
		}
		// The snapshot ID with the same pool and hash parses to the same parts.
		if snap, err := storage.ParseSnapshotID("s1-" + id[len("b1-"):]); err != nil || snap != got {
			t.Fatalf("snapshot form of %q = %+v, %v; want %+v", id, snap, err, got)
		}
	})
}

// FuzzVolumeID: for every valid pool name and any name, the volume and snapshot IDs
// parse back to the pool and a hash that depends on the name alone, and a volume's
// hash is never its namesake snapshot's.
func FuzzVolumeID(f *testing.F) {
	f.Add("default", pvcName)
	f.Add("my-pool", "")
	f.Add(strings.Repeat("p", 32), strings.Repeat("n", 300))
	f.Add("a", "\xff\x00:/..")
	f.Add("A", "pvc-1")
	f.Fuzz(func(t *testing.T, pool, name string) {
		if storage.ValidatePoolName(pool) != nil {
			return
		}
		vol, err := storage.ParseVolumeID(storage.VolumeID(pool, name))
		if err != nil || vol.Pool != pool {
			t.Fatalf("VolumeID(%q, %q) = %s parses to %+v, %v", pool, name, storage.VolumeID(pool, name), vol, err)
		}
		snap, err := storage.ParseSnapshotID(storage.SnapshotID(pool, name))
		if err != nil || snap.Pool != pool {
			t.Fatalf("SnapshotID(%q, %q) = %s parses to %+v, %v", pool, name, storage.SnapshotID(pool, name), snap, err)
		}
		if vol.Hash == snap.Hash {
			t.Fatalf("volume and snapshot %q share hash %s", name, vol.Hash)
		}
		if other, _ := storage.ParseVolumeID(storage.VolumeID("other", name)); other.Hash != vol.Hash {
			t.Fatalf("the hash of %q depends on the pool: %s in %s, %s in other", name, vol.Hash, pool, other.Hash)
		}
	})
}

// Berth's name rules, written as regular expressions: what ValidateName and
// ValidatePoolName document.
var (
	nameRule     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)
	poolNameRule = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)
)

// FuzzValidateName: ValidateName and ValidatePoolName accept exactly what their
// rules say, refuse with ErrInvalid, and keep hostile input out of long messages.
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{
		pvcName, "a", "a..b", "a.b", ".a", "a-", "-a", "a_b", strings.Repeat("a", 253), strings.Repeat("a", 254),
		"volumé", "a\x00", "a\xff", "fast-ssd", strings.Repeat("p", 32), strings.Repeat("p", 33), "p-", "ephemeral:x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		check := func(what string, err error, want bool) {
			t.Helper()
			switch {
			case want && err != nil:
				t.Fatalf("%s(%q) refuses a name its rule allows: %v", what, s, err)
			case !want && err == nil:
				t.Fatalf("%s(%q) accepts a name its rule refuses", what, s)
			case err != nil && !errors.Is(err, storage.ErrInvalid):
				t.Fatalf("%s(%q): %v does not wrap ErrInvalid", what, s, err)
			case err != nil && (len(err.Error()) > 512 || !utf8.ValidString(err.Error())):
				t.Fatalf("%s(%q): hostile input is not truncated in the message %q", what, s, err)
			}
		}
		check("ValidateName", storage.ValidateName(s), nameRule.MatchString(s) && !strings.Contains(s, ".."))
		check("ValidatePoolName", storage.ValidatePoolName(s), poolNameRule.MatchString(s))
	})
}
