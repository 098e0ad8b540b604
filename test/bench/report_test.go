package main

import (
	"strings"
	"testing"
)

func TestFigureLinesFollowTheTable(t *testing.T) {
	var rep report
	rep.check(sNode, "NodePublishVolume p50 ÷ budget", "0.90", "≤ 1", true)
	rep.figure("publish-over-budget", "0.900", "x")
	rep.figure("publish-p50", "250.0", "us")
	var out strings.Builder
	if err := rep.writeText(&out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	want := []string{"figure: publish-over-budget 0.900 x", "figure: publish-p50 250.0 us"}
	if len(lines) < len(want) {
		t.Fatalf("output too short:\n%s", out.String())
	}
	got := lines[len(lines)-len(want):]
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d from the end: got %q, want %q", len(want)-i, got[i], want[i])
		}
	}
}
