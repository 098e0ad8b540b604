package storage

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Volume IDs are opaque to Kubernetes but self-describing to Berth:
//
//	b1-<pool>-<hash>
//
// "b1" is the format version, <pool> the pool's name and <hash> the first 128 bits of
// SHA-256 over the CreateVolume name, in lowercase hex. The ID is a pure function of
// (pool, name), so a retried CreateVolume finds its volume with one stat, and the hash
// alone names the volume's directory inside the pool. A later format gets a new prefix.
const (
	idPrefix   = "b1-"
	hashLen    = 32
	maxPoolLen = 32
	// MaxNameLen bounds CreateVolume names (a Kubernetes object name is at most 253).
	MaxNameLen = 253
)

// VolumeID returns the ID of the volume called name in pool.
func VolumeID(pool, name string) string {
	return idPrefix + pool + "-" + nameHash("volume", name)
}

// EphemeralName is the volume name Berth uses for a CSI ephemeral inline volume whose
// kubelet-chosen volume_id is volumeID. The ':' cannot occur in a CreateVolume name, so
// ephemeral volumes can never collide with provisioned ones.
func EphemeralName(volumeID string) string { return ephemeralPrefix + volumeID }

const ephemeralPrefix = "ephemeral:"

// cutEphemeral returns kubelet's volume ID from an ephemeral volume's name.
func cutEphemeral(name string) (string, bool) {
	id, ok := strings.CutPrefix(name, ephemeralPrefix)
	return id, ok && id != ""
}

func nameHash(kind, name string) string {
	sum := sha256.Sum256([]byte(kind + "\x00" + name))
	return hex.EncodeToString(sum[:hashLen/2])
}

// ParsedID is a validated volume ID.
type ParsedID struct {
	Pool string
	Hash string
}

// ParseVolumeID validates id strictly and splits it. Nothing derived from an ID may
// reach a path before this succeeds.
func ParseVolumeID(id string) (ParsedID, error) {
	if !strings.HasPrefix(id, idPrefix) || len(id) < len(idPrefix)+1+1+hashLen {
		return ParsedID{}, fmt.Errorf("volume ID %q is not a Berth volume ID: %w", truncate(id), ErrInvalid)
	}
	rest := id[len(idPrefix):]
	hash := rest[len(rest)-hashLen:]
	if rest[len(rest)-hashLen-1] != '-' || !isLowerHex(hash) {
		return ParsedID{}, fmt.Errorf("volume ID %q has a malformed hash: %w", truncate(id), ErrInvalid)
	}
	pool := rest[:len(rest)-hashLen-1]
	if err := ValidatePoolName(pool); err != nil {
		return ParsedID{}, fmt.Errorf("volume ID %q: %w", truncate(id), err)
	}
	return ParsedID{Pool: pool, Hash: hash}, nil
}

// ValidatePoolName accepts 1-32 characters of [a-z0-9-], starting and ending
// alphanumeric, so a pool name is safe in IDs, paths and Kubernetes labels.
func ValidatePoolName(name string) error {
	if name == "" || len(name) > maxPoolLen {
		return fmt.Errorf("pool name %q must be 1-%d characters: %w", truncate(name), maxPoolLen, ErrInvalid)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
		if !alnum && !(c == '-' && i > 0 && i < len(name)-1) {
			return fmt.Errorf("pool name %q may hold only a-z, 0-9 and inner '-': %w", truncate(name), ErrInvalid)
		}
	}
	return nil
}

// ValidateName checks a CreateVolume (or ephemeral volume_id) name: 1-253 bytes of
// [A-Za-z0-9._-], starting alphanumeric, with no "..". Names never become paths (they
// are hashed), but a name no Kubernetes object could carry is rejected early and clearly.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("name is empty: %w", ErrInvalid)
	case len(name) > MaxNameLen:
		return fmt.Errorf("name is %d bytes, longer than %d: %w", len(name), MaxNameLen, ErrInvalid)
	case !utf8.ValidString(name):
		return fmt.Errorf("name is not valid UTF-8: %w", ErrInvalid)
	case strings.Contains(name, ".."):
		return fmt.Errorf("name %q contains \"..\": %w", truncate(name), ErrInvalid)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			(i > 0 && (c == '.' || c == '_' || c == '-'))
		if !ok {
			return fmt.Errorf("name %q: character %q at %d is not allowed (use A-Z a-z 0-9 . _ -): %w",
				truncate(name), c, i, ErrInvalid)
		}
	}
	return nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) {
			return false
		}
	}
	return true
}

// truncate keeps hostile input short and printable in error messages.
func truncate(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}
