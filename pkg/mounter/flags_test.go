package mounter

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name  string
		flags []string
		want  uintptr
	}{
		{name: "none", flags: nil, want: 0},
		{name: "ro", flags: []string{"ro"}, want: unix.MS_RDONLY},
		{name: "rw is the default", flags: []string{"rw"}, want: 0},
		{name: "noexec", flags: []string{"noexec"}, want: unix.MS_NOEXEC},
		{name: "exec is the default", flags: []string{"exec"}, want: 0},
		{name: "noatime", flags: []string{"noatime"}, want: unix.MS_NOATIME},
		{name: "nodiratime", flags: []string{"nodiratime"}, want: unix.MS_NODIRATIME},
		{name: "relatime", flags: []string{"relatime"}, want: unix.MS_RELATIME},
		{name: "strictatime", flags: []string{"strictatime"}, want: unix.MS_STRICTATIME},
		{name: "sync", flags: []string{"sync"}, want: unix.MS_SYNCHRONOUS},
		{name: "dirsync", flags: []string{"dirsync"}, want: unix.MS_DIRSYNC},
		{name: "nosuid", flags: []string{"nosuid"}, want: unix.MS_NOSUID},
		{name: "nodev", flags: []string{"nodev"}, want: unix.MS_NODEV},
		{
			name:  "several, with repeats",
			flags: []string{"ro", "noexec", "noatime", "ro"},
			want:  unix.MS_RDONLY | unix.MS_NOEXEC | unix.MS_NOATIME,
		},
		{name: "rw does not cancel ro", flags: []string{"ro", "rw"}, want: unix.MS_RDONLY},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseFlags(tt.flags)
			if err != nil {
				t.Fatalf("ParseFlags(%q): %v", tt.flags, err)
			}
			if got != tt.want {
				t.Errorf("ParseFlags(%q) = %#x, want %#x", tt.flags, got, tt.want)
			}
		})
	}
}

func TestParseFlagsRejects(t *testing.T) {
	for _, bad := range []string{
		"suid", "dev", "bind", "bind=x", "rbind", "uid=0", "context=x", "remount",
		"", " ro", "RO", "ro,suid", "ro,noexec", "nosymfollow", "defaults",
	} {
		t.Run(strconv.Quote(bad), func(t *testing.T) {
			got, err := ParseFlags([]string{"ro", bad})
			if !errors.Is(err, ErrFlagNotAllowed) {
				t.Fatalf("ParseFlags(%q) = %#x, %v; want an error matching ErrFlagNotAllowed", bad, got, err)
			}
			if got != 0 {
				t.Errorf("ParseFlags(%q) = %#x with an error, want 0", bad, got)
			}
			if !strings.Contains(err.Error(), strconv.Quote(bad)) {
				t.Errorf("error %q does not name the flag %q", err, bad)
			}
		})
	}
}

// TestShowsFlags: what a mount table line says of the per-mount flags asked for.
func TestShowsFlags(t *testing.T) {
	tests := []struct {
		name    string
		options string
		flags   []string
		want    bool
	}{
		{"nothing asked", "rw,nosuid,nodev,relatime", nil, true},
		{"flags shown", "rw,nosuid,nodev,noexec,noatime", []string{"noexec", "noatime"}, true},
		{"more shown than asked (inherited)", "ro,nosuid,nodev,noexec,relatime", []string{"nosuid"}, true},
		{"a flag missing", "rw,nosuid,nodev,relatime", []string{"noexec"}, false},
		{"read-only missing", "rw,nosuid,nodev,relatime", []string{"ro"}, false},
		{"another atime policy", "rw,nosuid,nodev,noatime", []string{"relatime"}, false},
		{"strictatime shown by no policy", "rw,nosuid,nodev", []string{"strictatime"}, true},
		{"strictatime asked, relatime shown", "rw,nosuid,nodev,relatime", []string{"strictatime"}, false},
		{"sync belongs to the filesystem", "rw,nosuid,nodev,relatime", []string{"sync", "dirsync"}, true},
		{"rw and exec ask nothing", "rw,nosuid,nodev,noexec,relatime", []string{"rw", "exec"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			flags, err := ParseFlags(tc.flags)
			if err != nil {
				t.Fatal(err)
			}
			if got := ShowsFlags(&MountInfo{Options: tc.options}, flags); got != tc.want {
				t.Fatalf("ShowsFlags(%q, %v) = %t, want %t", tc.options, tc.flags, got, tc.want)
			}
		})
	}
	if got := FormatFlags(unix.MS_NOEXEC | unix.MS_NOATIME); got != "noexec,noatime" {
		t.Errorf("FormatFlags = %q", got)
	}
}

// mountFlagBits is the documented allowlist: every CSI mount flag Berth accepts for a
// bind mount, with the MS_ flag it adds (0: a default that adds nothing).
var mountFlagBits = map[string]uintptr{
	"ro": unix.MS_RDONLY, "rw": 0, "noexec": unix.MS_NOEXEC, "exec": 0,
	"noatime": unix.MS_NOATIME, "nodiratime": unix.MS_NODIRATIME, "relatime": unix.MS_RELATIME,
	"strictatime": unix.MS_STRICTATIME, "sync": unix.MS_SYNCHRONOUS, "dirsync": unix.MS_DIRSYNC,
	"nosuid": unix.MS_NOSUID, "nodev": unix.MS_NODEV,
}

// FuzzParseFlags: mount_flags (one per line of the input) are accepted only when
// every one is on the allowlist; the result is exactly the union of their MS_ flags,
// whatever the order, and "rw" or "exec" never removes a restriction. A refusal
// matches ErrFlagNotAllowed, names the first flag refused and returns no flags.
func FuzzParseFlags(f *testing.F) {
	for _, s := range []string{
		"ro", "ro\nnoexec\nnosuid\nnodev", "rw\nro", "ro\nrw\nexec\nnoexec", "noatime\nrelatime",
		"", "suid", "ro\nbind", "ro,nosuid", "RO", " ro", "ro\n", "remount", "nosymfollow", "ro\x00",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		flags := strings.Split(s, "\n")
		got, err := ParseFlags(flags)
		var want uintptr
		firstBad := -1
		for i, fl := range flags {
			bit, ok := mountFlagBits[fl]
			if !ok && firstBad < 0 {
				firstBad = i
			}
			want |= bit
		}
		if firstBad >= 0 {
			if !errors.Is(err, ErrFlagNotAllowed) || got != 0 || !strings.Contains(err.Error(), strconv.Quote(flags[firstBad])) {
				t.Fatalf("ParseFlags(%q) = %#x, %v; want a refusal naming %q", flags, got, err, flags[firstBad])
			}
			return
		}
		if err != nil || got != want {
			t.Fatalf("ParseFlags(%q) = %#x, %v; want %#x", flags, got, err, want)
		}
		reversed := slices.Clone(flags)
		slices.Reverse(reversed)
		if again, err := ParseFlags(append(reversed, "rw", "exec")); err != nil || again != got {
			t.Fatalf("ParseFlags(%q) = %#x, %v; want %#x as for %q", reversed, again, err, got, flags)
		}
	})
}
