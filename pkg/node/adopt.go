package node

import (
	"errors"
	"strings"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/mounter"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// AttrPath is the volume attribute naming an adopted host directory.
const AttrPath = "path"

// adoptedSource checks an adopted (static) volume's directory: under an allowed
// adopt root, reached without symlinks, a directory, not a pool's. Adopted volumes
// are mount volumes; every access mode is accepted, since the PersistentVolume's
// node affinity pins the directory to this node (ReadWriteMany arrives as
// MULTI_NODE_MULTI_WRITER and means several pods on this node).
func (s *Server) adoptedSource(req *csi.NodePublishVolumeRequest) (*publishSource, error) {
	vc := req.GetVolumeCapability()
	if vc.GetMount() == nil {
		return nil, status.Errorf(codes.InvalidArgument, "adopted volume %s must use the mount access type", req.GetVolumeId())
	}
	if vc.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_UNKNOWN {
		return nil, status.Error(codes.InvalidArgument, "volume_capability.access_mode is required")
	}
	path, ok := req.GetVolumeContext()[AttrPath]
	if !ok {
		return nil, status.Errorf(codes.InvalidArgument, "adopted volume %s needs the volume attribute %q naming its directory", req.GetVolumeId(), AttrPath)
	}
	h, err := s.engine.OpenAdopted(path)
	if err != nil {
		return nil, csierr.Status(err)
	}
	return &publishSource{dir: path, handle: h, access: storage.AccessMount}, nil
}

// fsStats reports the figures of the filesystem mounted at a publish path: an adopted
// directory's filesystem, or a staged image volume's. For an adopted directory that
// carries a project ID with PROJINHERIT on XFS or ext4 with project quotas, the kernel's
// statfs already reports that project's limit and usage, so an operator's quota on the
// directory is what the pod's stats show.
func fsStats(volumePath string) (*csi.NodeGetVolumeStatsResponse, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(volumePath, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, status.Errorf(codes.NotFound, "volume_path %s does not exist", volumePath)
		}
		return nil, status.Errorf(codes.Internal, "statfs %s: %v", volumePath, err)
	}
	bs := st.Bsize
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(st.Blocks) * bs, Used: int64(st.Blocks-st.Bfree) * bs, Available: int64(st.Bavail) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files), Used: int64(st.Files - st.Ffree), Available: int64(st.Ffree)},
	}}, nil
}

// adoptedProblems reports an adopted directory that vanished from under its mount.
func adoptedProblems(volumePath string) []storage.Problem {
	if volumePath == "" {
		return nil
	}
	m, err := mounter.At(volumePath)
	switch {
	case err != nil:
		return []storage.Problem{{Kind: storage.Inaccessible, Reason: "MountUnreadable", Message: err.Error()}}
	case m == nil:
		return []storage.Problem{{Kind: storage.Inaccessible, Reason: "NotMounted", Message: "the volume is not mounted at " + volumePath}}
	case strings.HasSuffix(m.Root, "//deleted"):
		return []storage.Problem{{Kind: storage.Inaccessible, Reason: "DirectoryMissing",
			Message: "the adopted directory " + strings.TrimSuffix(m.Root, "//deleted") + " was removed from the host"}}
	}
	return nil
}
