package storage

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Problem kinds, mirroring CSI's VolumeHealthErrorType.
const (
	Degraded     = "Degraded"     // usable, not operating as it should
	Inaccessible = "Inaccessible" // cannot be used from this node
)

// Problem is one adverse health condition of a volume. Reason is a short CamelCase
// word for machines; Message is for people.
type Problem struct {
	Kind, Reason, Message string
}

// Condition checks that the volume's pool is served and that its data directory exists,
// is a directory and sits on a writable filesystem. No problems means healthy.
func (p *Pool) Condition(hash string) []Problem {
	if err := p.Health(); err != nil {
		return []Problem{{Inaccessible, "PoolNotServed", fmt.Sprintf("pool %s is not served: %v", p.cfg.Name, err)}}
	}
	data := p.DataPath(hash)
	fi, err := os.Lstat(data)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return []Problem{{Inaccessible, "DataDirectoryMissing", "volume data directory " + data + " is missing"}}
	case err != nil:
		return []Problem{{Inaccessible, "DataDirectoryUnreadable", fmt.Sprintf("volume data directory %s cannot be read: %v", data, err)}}
	case !fi.IsDir():
		return []Problem{{Inaccessible, "DataDirectoryMissing", "volume data path " + data + " is not a directory"}}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(data, &st); err != nil {
		return []Problem{{Inaccessible, "FilesystemUnreadable", fmt.Sprintf("statfs %s: %v", data, err)}}
	}
	if st.Flags&unix.ST_RDONLY != 0 {
		return []Problem{{Degraded, "ReadOnlyFilesystem", "the filesystem holding " + data + " is read-only"}}
	}
	return nil
}
