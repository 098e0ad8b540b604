package storage

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// AttrPath is the volume attribute naming an adopted host directory.
const AttrPath = "path"

// adoptedSource checks an adopted (static) volume's directory: under an allowed
// adopt root, reached without symlinks, a directory, not a pool's. Adopted volumes
// are mount volumes; every access mode is accepted, since the PersistentVolume's
// node affinity pins the directory to this node (ReadWriteMany arrives as
// MULTI_NODE_MULTI_WRITER and means several pods on this node).
func (n *Node) adoptedSource(req PublishRequest) (*publishSource, error) {
	if req.Capability.Access != AccessMount {
		return nil, errorf(ErrInvalid, "adopted volume %s must use the mount access type", req.VolumeID)
	}
	if req.Capability.Mode == ModeUnknown {
		return nil, errorf(ErrInvalid, "volume_capability.access_mode is required")
	}
	path, ok := req.VolumeContext[AttrPath]
	if !ok {
		return nil, errorf(ErrInvalid, "adopted volume %s needs the volume attribute %q naming its directory", req.VolumeID, AttrPath)
	}
	h, err := n.e.OpenAdopted(path)
	if err != nil {
		return nil, err
	}
	return &publishSource{MountSource: MountSource{Path: path}, handle: h}, nil
}

// fsStats reports the figures of the filesystem mounted at a publish path: an adopted
// directory's filesystem, or a staged image volume's. For an adopted directory that
// carries a project ID with PROJINHERIT on XFS or ext4 with project quotas, the kernel's
// statfs already reports that project's limit and usage, so an operator's quota on the
// directory is what the pod's stats show.
func fsStats(volumePath string) (Usage, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(volumePath, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return Usage{}, errorf(ErrNotFound, "volume_path %s does not exist", volumePath)
		}
		return Usage{}, fmt.Errorf("statfs %s: %w", volumePath, err)
	}
	bs := st.Bsize
	return Usage{
		TotalBytes: int64(st.Blocks) * bs, UsedBytes: int64(st.Blocks-st.Bfree) * bs, AvailableBytes: int64(st.Bavail) * bs,
		TotalInodes: int64(st.Files), UsedInodes: int64(st.Files - st.Ffree), AvailableInodes: int64(st.Ffree),
	}, nil
}

// adoptedProblems reports an adopted directory that vanished from under its mount.
func (n *Node) adoptedProblems(volumePath string) []Problem {
	if volumePath == "" {
		return nil
	}
	m, err := n.e.host.Mounts.At(volumePath)
	switch {
	case err != nil:
		return []Problem{{Kind: Inaccessible, Reason: "MountUnreadable", Message: err.Error()}}
	case m == nil:
		return []Problem{{Kind: Inaccessible, Reason: "NotMounted", Message: "the volume is not mounted at " + volumePath}}
	case strings.HasSuffix(m.Root, "//deleted"):
		return []Problem{{Kind: Inaccessible, Reason: "DirectoryMissing",
			Message: "the adopted directory " + strings.TrimSuffix(m.Root, "//deleted") + " was removed from the host"}}
	}
	return nil
}
