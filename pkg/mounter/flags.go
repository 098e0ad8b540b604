package mounter

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrFlagNotAllowed is wrapped by the error ParseFlags returns for a mount flag
// outside the allowlist; callers map it to InvalidArgument.
var ErrFlagNotAllowed = errors.New("mount flag is not allowed")

// allowedFlags is the CSI mount_flags allowlist for bind mounts. "rw" and
// "exec" are the defaults and add nothing. "sync" and "dirsync" are superblock
// flags: a bind remount accepts them but does not change the filesystem, so
// they only take effect where the filesystem itself is mounted (staging).
var allowedFlags = map[string]uintptr{
	"ro":          unix.MS_RDONLY,
	"rw":          0,
	"noexec":      unix.MS_NOEXEC,
	"exec":        0,
	"noatime":     unix.MS_NOATIME,
	"nodiratime":  unix.MS_NODIRATIME,
	"relatime":    unix.MS_RELATIME,
	"strictatime": unix.MS_STRICTATIME,
	"sync":        unix.MS_SYNCHRONOUS,
	"dirsync":     unix.MS_DIRSYNC,
	"nosuid":      unix.MS_NOSUID,
	"nodev":       unix.MS_NODEV,
}

// atimeFlags are the MS_ flags that choose a mount's access-time policy.
const atimeFlags = unix.MS_NOATIME | unix.MS_NODIRATIME | unix.MS_RELATIME | unix.MS_STRICTATIME

// stNoSymFollow is ST_NOSYMFOLLOW from <linux/statfs.h> (Linux 5.10), which
// golang.org/x/sys/unix does not define.
const stNoSymFollow = 0x2000

// flagError names the rejected flag and matches ErrFlagNotAllowed.
type flagError string

func (f flagError) Error() string { return fmt.Sprintf("mount flag %q is not allowed", string(f)) }

func (flagError) Is(target error) bool { return target == ErrFlagNotAllowed }

// ParseFlags turns CSI mount_flags into MS_* flags for Options.Flags. Only the
// allowlisted per-mount flags are accepted; anything else (a filesystem
// option, "suid", "dev", an empty string, a comma-separated list) returns an
// error naming the flag that matches ErrFlagNotAllowed. Flags only ever add
// restrictions: a later "rw" or "exec" does not cancel "ro" or "noexec".
func ParseFlags(mountFlags []string) (uintptr, error) {
	var flags uintptr
	for _, f := range mountFlags {
		v, ok := allowedFlags[f]
		if !ok {
			return 0, flagError(f)
		}
		flags |= v
	}
	return flags, nil
}

// inheritedFlags returns the MS_ flags a bind remount must carry to keep the
// per-mount flags of the mount that holds source, read with statfs(2).
//
// A bind mount starts as a copy of the source's mount, and MS_REMOUNT|MS_BIND
// replaces all of its per-mount flags. In a user namespace the kernel locks
// ro, nosuid, nodev, noexec and the atime policy of mounts inherited from a
// more privileged namespace, and a remount that drops one of them fails with
// EPERM; outside one, dropping them would silently weaken the source's
// protection. So ro, nosuid, nodev, noexec and nosymfollow are always kept.
// The source's atime policy is kept only when the caller asked for none
// (requested holds the caller's flags): an explicit atime flag is honoured,
// and fails with EPERM if the source's atime policy is locked to another.
func inheritedFlags(source string, requested uintptr) (uintptr, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(source, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", source, err)
	}
	var flags uintptr
	for _, m := range []struct {
		st int64
		ms uintptr
	}{
		{unix.ST_RDONLY, unix.MS_RDONLY},
		{unix.ST_NOSUID, unix.MS_NOSUID},
		{unix.ST_NODEV, unix.MS_NODEV},
		{unix.ST_NOEXEC, unix.MS_NOEXEC},
		{stNoSymFollow, unix.MS_NOSYMFOLLOW},
	} {
		if st.Flags&m.st != 0 {
			flags |= m.ms
		}
	}
	if requested&atimeFlags == 0 {
		switch {
		case st.Flags&unix.ST_NOATIME != 0:
			flags |= unix.MS_NOATIME
		case st.Flags&unix.ST_RELATIME != 0:
			flags |= unix.MS_RELATIME
		default:
			flags |= unix.MS_STRICTATIME
		}
		if st.Flags&unix.ST_NODIRATIME != 0 {
			flags |= unix.MS_NODIRATIME
		}
	}
	return flags, nil
}

// flagNames name the MS_ flags ParseFlags returns, in a fixed order.
var flagNames = []struct {
	ms   uintptr
	name string
}{
	{unix.MS_RDONLY, "ro"}, {unix.MS_NOSUID, "nosuid"}, {unix.MS_NODEV, "nodev"}, {unix.MS_NOEXEC, "noexec"},
	{unix.MS_SYNCHRONOUS, "sync"}, {unix.MS_DIRSYNC, "dirsync"}, {unix.MS_NOATIME, "noatime"},
	{unix.MS_NODIRATIME, "nodiratime"}, {unix.MS_RELATIME, "relatime"}, {unix.MS_STRICTATIME, "strictatime"},
}

// FormatFlags names the MS_ flags of ParseFlags' result, comma-separated ("none"
// when there are none), for messages.
func FormatFlags(flags uintptr) string {
	var out []string
	for _, f := range flagNames {
		if flags&f.ms != 0 {
			out = append(out, f.name)
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ",")
}

// ShowsFlags reports whether mount m carries the per-mount flags asked for (as
// ParseFlags returns them), as far as its mount table line tells: ro, nosuid,
// nodev, noexec and nodiratime among its options, and the access-time policy asked
// for, if any (strictatime: neither noatime nor relatime). Flags m has beyond those
// may come from the mount it binds and are not held against it. sync and dirsync
// belong to the filesystem, not to the mount, and are not compared.
func ShowsFlags(m *MountInfo, flags uintptr) bool {
	opts := strings.Split(m.Options, ",")
	has := func(o string) bool { return slices.Contains(opts, o) }
	for _, f := range flagNames {
		switch f.ms {
		case unix.MS_RDONLY, unix.MS_NOSUID, unix.MS_NODEV, unix.MS_NOEXEC, unix.MS_NODIRATIME:
			if flags&f.ms != 0 && !has(f.name) {
				return false
			}
		}
	}
	switch {
	case flags&unix.MS_NOATIME != 0:
		return has("noatime")
	case flags&unix.MS_RELATIME != 0:
		return has("relatime")
	case flags&unix.MS_STRICTATIME != 0:
		return !has("noatime") && !has("relatime")
	}
	return true
}
