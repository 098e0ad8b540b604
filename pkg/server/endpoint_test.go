package server

import (
	"path/filepath"
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

// FuzzParseEndpoint: an accepted endpoint gives a clean absolute path that a unix
// socket can be bound to, the path the endpoint names; that path is accepted again,
// bare or as a unix URL, unchanged. Every such path is accepted as a unix URL.
func FuzzParseEndpoint(f *testing.F) {
	for _, s := range []string{
		"unix:///csi/csi.sock", "unix:/csi/csi.sock", "/csi/csi.sock", "unix://csi.sock", "csi.sock", "",
		"tcp://127.0.0.1:9000", "unix:///", "unix:///a/../", "/a://b", "unix:///a//b/./c/", "UNIX:///a",
		"/" + strings.Repeat("a", maxSocketPathLen), "unix:///a\x00b", "unix://", "unix:",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ep string) {
		got, err := ParseEndpoint(ep)
		if err == nil {
			named := ep
			if rest, ok := strings.CutPrefix(ep, "unix://"); ok {
				named = rest
			} else if rest, ok := strings.CutPrefix(ep, "unix:"); ok {
				named = rest
			}
			if !filepath.IsAbs(got) || got == "/" || got != filepath.Clean(named) || len(got) > maxSocketPathLen || strings.IndexByte(got, 0) >= 0 {
				t.Fatalf("ParseEndpoint(%q) = %q", ep, got)
			}
			for _, again := range []string{got, "unix://" + got, "unix:" + got} {
				if p, err := ParseEndpoint(again); err != nil || p != got {
					t.Fatalf("ParseEndpoint(%q) = %q, but ParseEndpoint(%q) = %q, %v", ep, got, again, p, err)
				}
			}
		}
		if clean := filepath.Clean(ep); filepath.IsAbs(ep) && clean != "/" && len(clean) <= maxSocketPathLen && strings.IndexByte(ep, 0) < 0 {
			if p, err := ParseEndpoint("unix://" + ep); err != nil || p != clean {
				t.Fatalf("ParseEndpoint(%q) = %q, %v; want %q", "unix://"+ep, p, err, clean)
			}
		}
	})
}
