package main

import "testing"

func TestSnapSizeFlag(t *testing.T) {
	tests := []struct {
		value   string
		want    int64
		wantErr bool
	}{
		{"1GiB", 1 << 30, false},
		{"10G", 10 << 30, false},
		{"8MiB", 8 << 20, false},
		{"9MiB", 9 << 20, false},
		{"4MiB", 0, true},          // less than one MiB per file
		{"8388609", 0, true},       // not a whole number of 4 KiB blocks per file
		{"1TB", 0, true},           // not a size
		{"-1GiB", 0, true},         // negative
		{"", 0, true},              // empty
		{"1GiBfoo", 0, true},       // trailing junk
		{"9223372036GiB", 0, true}, // overflows
	}
	for _, tc := range tests {
		t.Run(tc.value, func(t *testing.T) {
			var s snapSize
			err := s.Set(tc.value)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Set(%q) error %v, want error %v", tc.value, err, tc.wantErr)
			}
			if err == nil && int64(s.byteSize) != tc.want {
				t.Fatalf("Set(%q) = %d, want %d", tc.value, s.byteSize, tc.want)
			}
		})
	}
}
