package driver

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/go-logr/logr"
)

// TestJSONLogKeysOnce: a key that a call's logger carries and a line names again is
// written once, with the line's value, as klog's text format does; keys of the
// logger and of the line otherwise all appear, in that order.
func TestJSONLogKeysOnce(t *testing.T) {
	var buf bytes.Buffer
	h := slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.Level(-128)})
	logger := logr.FromSlogHandler(uniqueKeys{inner: h}).
		WithValues("requestID", "r1", "volumeID", "b1-p-aa").
		WithValues("claimName", "data")
	logger.Info("Volume created", "volumeID", "b1-p-bb", "sizeBytes", 1)
	logger.WithName("sub").Info("Step", "step", 2)

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2:\n%s", len(lines), buf.String())
	}
	if n := strings.Count(lines[0], `"volumeID"`); n != 1 {
		t.Fatalf("volumeID written %d times, want once: %s", n, lines[0])
	}
	for i, want := range []map[string]any{
		{"requestID": "r1", "volumeID": "b1-p-bb", "claimName": "data", "sizeBytes": float64(1)},
		{"requestID": "r1", "volumeID": "b1-p-aa", "claimName": "data", "step": float64(2)},
	} {
		var got map[string]any
		if err := json.Unmarshal([]byte(lines[i]), &got); err != nil {
			t.Fatalf("line %d: %v: %s", i, err, lines[i])
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("line %d: %s = %v, want %v: %s", i, k, got[k], v, lines[i])
			}
		}
	}
	if i, j := strings.Index(lines[0], `"requestID"`), strings.Index(lines[0], `"sizeBytes"`); i < 0 || i > j {
		t.Errorf("the logger's keys should come before the line's: %s", lines[0])
	}
}
