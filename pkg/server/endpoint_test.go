package server

import (
	"strings"
	"testing"
)

func TestParseEndpoint(t *testing.T) {
	long := "/" + strings.Repeat("a", maxSocketPathLen) // 108 bytes
	atLimit := "/" + strings.Repeat("a", maxSocketPathLen-1)

	tests := []struct {
		name    string
		ep      string
		want    string
		wantErr string
	}{
		{name: "unix URL with three slashes", ep: "unix:///csi/csi.sock", want: "/csi/csi.sock"},
		{name: "unix URL with one slash", ep: "unix:/csi/csi.sock", want: "/csi/csi.sock"},
		{name: "bare absolute path", ep: "/csi/csi.sock", want: "/csi/csi.sock"},
		{name: "path is cleaned", ep: "unix:///csi//x/../csi.sock/", want: "/csi/csi.sock"},
		{name: "path at the sun_path limit", ep: atLimit, want: atLimit},
		{name: "empty", ep: "", wantErr: "empty"},
		{name: "unix scheme without path", ep: "unix://", wantErr: "empty"},
		{name: "tcp", ep: "tcp://127.0.0.1:10000", wantErr: "unsupported scheme"},
		{name: "relative path", ep: "csi.sock", wantErr: "not absolute"},
		{name: "unix URL with host", ep: "unix://host/csi.sock", wantErr: "not absolute"},
		{name: "relative unix path", ep: "unix:csi.sock", wantErr: "not absolute"},
		{name: "abstract socket", ep: "unix:@berth", wantErr: "not absolute"},
		{name: "root directory", ep: "unix:///", wantErr: "root directory"},
		{name: "NUL byte", ep: "/csi/csi\x00.sock", wantErr: "NUL"},
		{name: "longer than sun_path", ep: "unix://" + long, wantErr: "limit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseEndpoint(tc.ep)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseEndpoint(%q) = %q, want error mentioning %q", tc.ep, got, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseEndpoint(%q) error %q does not name the problem %q", tc.ep, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseEndpoint(%q): %v", tc.ep, err)
			}
			if got != tc.want {
				t.Fatalf("ParseEndpoint(%q) = %q, want %q", tc.ep, got, tc.want)
			}
		})
	}
}
