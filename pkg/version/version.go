// Package version tells which build of Berth is running.
package version

import "runtime/debug"

// Version is set by the build (-ldflags "-X github.com/berth-csi/berth/pkg/version.Version=v1.2.3").
// A plain `go build` leaves it empty and Get answers from the module build info.
var Version = ""

// Get returns the build's version: the linker-set one, else the main module's version,
// else the VCS revision, else "devel".
func Get() string {
	if Version != "" {
		return Version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	rev, dirty := "", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return "devel-" + rev
}
