package transfer

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/berth-csi/berth/pkg/storage/meta"
)

// The staging directory of a Pull holds the copy being made and how far it got:
//
//	<staging>/data        the tree or image file, complete only once committed
//	<staging>/state.json  the resume state, replaced atomically (meta.WriteFile)
//	                      after a syncfs, so it never claims more than the disk holds
const (
	stagingData  = "data"
	stagingState = "state.json"
	stateVersion = 1
)

// state is what a Pull knows of its staging copy across attempts and restarts.
type state struct {
	Version    int    `json:"version"`
	ID         string `json:"id"`
	Generation string `json:"generation,omitempty"`
	Kind       Kind   `json:"kind,omitempty"`
	SizeBytes  int64  `json:"sizeBytes,omitempty"`
	FSType     string `json:"fsType,omitempty"`
	AccessType string `json:"accessType,omitempty"`
	// Started: data exists and holds the source up to Path and Step (trees), and
	// Partial up to its offset. Names are bytes (JSON strings would mangle
	// non-UTF-8 names), base64 in the file.
	Started bool      `json:"started,omitempty"`
	Path    [][]byte  `json:"path,omitempty"`
	Step    uint8     `json:"step,omitempty"`
	Partial *partialS `json:"partial,omitempty"`
	// Bytes is the data received over every attempt.
	Bytes int64 `json:"bytes,omitempty"`
	// ServerTime is the server's clock (Unix nanoseconds) when it began reading
	// the source for the attempt that started this copy (resumed attempts keep
	// it): the Since of a later delta pull. Skipped: what a delta pull did not
	// need to receive.
	ServerTime int64 `json:"serverTime,omitempty"`
	Skipped    int64 `json:"skipped,omitempty"`
	// Delta: the server honours this delta pull (an image is patched in
	// place, a tree built with links to the base's unchanged files).
	Delta bool `json:"delta,omitempty"`
	// Complete: data is complete and flushed; only the commit is left.
	Complete bool `json:"complete,omitempty"`
}

type partialS struct {
	Name    []byte      `json:"name,omitempty"`
	Offset  int64       `json:"offset"`
	Version fileVersion `json:"version"`
}

func loadState(staging string) (*state, error) {
	b, err := os.ReadFile(filepath.Join(staging, stagingState))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("transfer state %s: %w", staging, err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("transfer state %s: version %d, want %d", staging, s.Version, stateVersion)
	}
	for _, n := range s.Path {
		if err := checkName(string(n)); err != nil {
			return nil, fmt.Errorf("transfer state %s: %w", staging, err)
		}
	}
	return &s, nil
}

func (s *state) save(staging string) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return meta.WriteFile(staging, stagingState, b)
}

// request is the resume request this state makes.
func (s *state) request(id string, rate int64) *request {
	r := &request{Version: protocolVersion, ID: id, RateLimit: rate}
	if !s.Started {
		return r
	}
	r.Started, r.Generation, r.Kind, r.Step = true, s.Generation, s.Kind, s.Step
	for _, n := range s.Path {
		r.Path = append(r.Path, string(n))
	}
	if s.Partial != nil {
		r.Partial = partial{Name: string(s.Partial.Name), Offset: s.Partial.Offset, Version: s.Partial.Version}
	}
	return r
}

// restart forgets everything but the ID: the copy starts over.
func (s *state) restart() {
	*s = state{Version: stateVersion, ID: s.ID, Bytes: s.Bytes, Skipped: s.Skipped}
}
