package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
)

func TestByteSize(t *testing.T) {
	cases := []struct {
		name    string
		in      string
		want    int64
		wantErr bool
		str     string
	}{
		{name: "GiB", in: "1GiB", want: 1 << 30, str: "1GiB"},
		{name: "G alone", in: "2G", want: 2 << 30, str: "2GiB"},
		{name: "MiB", in: "512MiB", want: 512 << 20, str: "512MiB"},
		{name: "KiB", in: "64K", want: 64 << 10, str: "64KiB"},
		{name: "bytes", in: "4097", want: 4097, str: "4097"},
		{name: "not a number", in: "lots", wantErr: true},
		{name: "negative", in: "-1MiB", wantErr: true},
		{name: "overflow", in: "9999999999999GiB", wantErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var b byteSize
			err := b.Set(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Set(%q) error = %v, want error %t", tc.in, err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			if int64(b) != tc.want || b.String() != tc.str {
				t.Errorf("Set(%q) = %d (%s), want %d (%s)", tc.in, int64(b), b.String(), tc.want, tc.str)
			}
		})
	}
}

func TestSummarizeRunsTakesTheLowerMedian(t *testing.T) {
	runs := []dataResult{{seqWrite: 30}, {seqWrite: 10}, {seqWrite: 20}, {seqWrite: 40}}
	got := summarizeRuns(runs, func(r dataResult) float64 { return r.seqWrite })
	if got != (runSummary{median: 20, lo: 10, hi: 40}) {
		t.Errorf("summarizeRuns = %+v, want median 20 in 10–40", got)
	}
}

func TestRunDataMeasuresAndRemovesItsFile(t *testing.T) {
	testutil.RequireRoot(t) // drops the page cache
	dir := t.TempDir()
	res, err := runData(context.Background(), dir, dataLoad{size: 4 << 20, ops: 64, seed: 1}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.seqWrite <= 0 || res.seqRead <= 0 || res.randWrite <= 0 || res.randRead <= 0 {
		t.Errorf("runData = %+v, want every figure positive", res)
	}
	if _, err := os.Lstat(filepath.Join(dir, "bench-data")); !os.IsNotExist(err) {
		t.Errorf("runData left its file behind (lstat: %v)", err)
	}
}
