package storage

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"time"
)

// Access types of a volume.
const (
	AccessMount = "mount"
	AccessBlock = "block"
)

const recordVersion = 1

// Source is the content a volume was created from.
type Source struct {
	// Kind is "snapshot" or "volume".
	Kind string `json:"kind"`
	ID   string `json:"id"`
}

// Record is the durable description of one volume. It lives beside the volume's data
// (<pool>/volumes/<hash>/record.json) and is only ever replaced atomically.
type Record struct {
	Version       int               `json:"version"`
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	Pool          string            `json:"pool"`
	CapacityBytes int64             `json:"capacityBytes"`
	AccessType    string            `json:"accessType"`
	FSType        string            `json:"fsType,omitempty"`
	Parameters    map[string]string `json:"parameters,omitempty"`
	// MutableParameters are the mutable parameters given at creation or set by
	// ModifyVolume since (modify.go); they take precedence over Parameters.
	MutableParameters map[string]string `json:"mutableParameters,omitempty"`
	ContentSource     *Source           `json:"contentSource,omitempty"`
	Ephemeral         bool              `json:"ephemeral,omitempty"`
	CreatedAt         time.Time         `json:"createdAt"`
	// ProjectID is the quota project of a quota-kind volume (0 when none).
	ProjectID uint32 `json:"projectID,omitempty"`
	// Claim is the PersistentVolumeClaim the volume was created for, when the
	// provisioner passed it (--extra-create-metadata); absent in older records.
	Claim *Claim `json:"claim,omitempty"`
	// Pulled says which source another node's plugin sent this volume's content
	// from (a cross-node clone or restore), of which generation, and since when
	// (the sender's clock as it began reading): what a resync compares against.
	// Resynced is set by the last resync (resync.go). Absent in older records.
	Pulled   *Pulled `json:"pulled,omitempty"`
	Resynced *Pulled `json:"resynced,omitempty"`

	// pullFrom is the node a volume being created pulls its content source
	// from (remote.go); zero when the source is in the pool. fsTypeOpen: the
	// request named no filesystem, so the pulled image's is the volume's.
	// Neither is recorded.
	pullFrom   Peer
	fsTypeOpen bool
}

// Pulled is a copy of another node's volume or snapshot: its ID, its
// generation (another object under the same ID has another), and the sending
// node's clock when it began reading it.
type Pulled struct {
	ID         string    `json:"id"`
	Generation string    `json:"generation,omitempty"`
	Since      time.Time `json:"since"`
}

// Claim names a PersistentVolumeClaim.
type Claim struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// Clone returns a deep copy, so callers may not mutate the engine's index.
func (r *Record) Clone() *Record {
	c := *r
	c.Parameters = maps.Clone(r.Parameters)
	c.MutableParameters = maps.Clone(r.MutableParameters)
	if r.ContentSource != nil {
		s := *r.ContentSource
		c.ContentSource = &s
	}
	if r.Claim != nil {
		cl := *r.Claim
		c.Claim = &cl
	}
	if r.Pulled != nil {
		p := *r.Pulled
		c.Pulled = &p
	}
	if r.Resynced != nil {
		p := *r.Resynced
		c.Resynced = &p
	}
	return &c
}

const recordFile = "record.json"

func encodeRecord(r *Record) ([]byte, error) {
	return json.MarshalIndent(r, "", "  ")
}

func readRecord(volDir string) (*Record, error) {
	data, err := os.ReadFile(filepath.Join(volDir, recordFile))
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("decode %s: %w", filepath.Join(volDir, recordFile), err)
	}
	if r.Version != recordVersion {
		return nil, fmt.Errorf("%s: unsupported record version %d", filepath.Join(volDir, recordFile), r.Version)
	}
	return &r, nil
}

// Hash is the part of the ID that names the volume's directory.
func (r *Record) Hash() string { return r.ID[len(r.ID)-hashLen:] }
