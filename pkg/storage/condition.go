package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

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
// is a directory and sits on a writable filesystem. No problems means healthy. The
// verdict is remembered for monitoring (VolumeStats).
func (p *Pool) Condition(hash string) []Problem {
	problems := p.condition(hash)
	p.noteCondition(hash, len(problems))
	return problems
}

func (p *Pool) condition(hash string) []Problem {
	if err := p.Health(); err != nil {
		return []Problem{{Inaccessible, "PoolNotServed", fmt.Sprintf("pool %s is not served: %v", p.cfg.Name, err)}}
	}
	name, isDir := p.backend.Data()
	data := filepath.Join(p.VolumeDir(hash), name)
	fi, err := os.Lstat(data)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return []Problem{{Inaccessible, "DataMissing", "volume data " + data + " is missing"}}
	case errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ESTALE):
		return []Problem{{Inaccessible, "StaleMount", fmt.Sprintf("the filesystem holding %s no longer answers (%v): the next NodeStageVolume remounts it", data, err)}}
	case err != nil:
		return []Problem{{Inaccessible, "DataUnreadable", fmt.Sprintf("volume data %s cannot be read: %v", data, err)}}
	case fi.IsDir() != isDir || !(fi.IsDir() || fi.Mode().IsRegular()):
		return []Problem{{Inaccessible, "DataMissing", "volume data " + data + " is not a " + map[bool]string{true: "directory", false: "regular file"}[isDir]}}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(data, &st); err != nil {
		return []Problem{{Inaccessible, "FilesystemUnreadable", fmt.Sprintf("statfs %s: %v", data, err)}}
	}
	if st.Flags&unix.ST_RDONLY != 0 {
		return []Problem{{Degraded, "ReadOnlyFilesystem", "the filesystem holding " + data + " is read-only"}}
	}
	problems := p.projectProblem(hash)
	if r, ok := p.lookup(hash); ok {
		full, err := p.backend.Full(context.Background(), p, r, p.VolumeDir(hash))
		switch {
		case err != nil:
			problems = append(problems, Problem{Degraded, "UsageUnknown", fmt.Sprintf("cannot read the usage of %s: %v", r.ID, err)})
		case full:
			problems = append(problems, Problem{Degraded, "CapacityExhausted", fmt.Sprintf("volume %s has used all of its %d bytes (or inodes)", r.ID, r.CapacityBytes)})
		}
	}
	return problems
}
