// Package volcap translates CSI volume capabilities into the engine's terms. The
// pools decide what they serve (storage.Pool.CheckCapability); the controller and
// the node service share this translation so both refuse the same things.
package volcap

import (
	"fmt"
	"math"
	"strconv"

	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
)

var modes = map[csi.VolumeCapability_AccessMode_Mode]storage.AccessMode{
	csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER:        storage.SingleNodeWriter,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:   storage.SingleNodeReaderOnly,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER: storage.SingleNodeSingleWriter,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:  storage.SingleNodeMultiWriter,
	csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:    storage.MultiNodeReaderOnly,
	csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER:  storage.MultiNodeSingleWriter,
	csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER:   storage.MultiNodeMultiWriter,
}

// Parse reads one capability. Errors wrap storage.ErrInvalid.
func Parse(c *csi.VolumeCapability) (storage.Capability, error) {
	if c == nil {
		return storage.Capability{}, fmt.Errorf("capability is empty: %w", storage.ErrInvalid)
	}
	mode, ok := modes[c.GetAccessMode().GetMode()]
	if !ok {
		return storage.Capability{}, fmt.Errorf("access_mode is required: %w", storage.ErrInvalid)
	}
	switch {
	case c.GetMount() != nil:
		group, err := mountGroup(c.GetMount().GetVolumeMountGroup())
		if err != nil {
			return storage.Capability{}, err
		}
		return storage.Capability{Access: storage.AccessMount, Mode: mode,
			FSType: c.GetMount().GetFsType(), MountFlags: c.GetMount().GetMountFlags(), MountGroup: group}, nil
	case c.GetBlock() != nil:
		return storage.Capability{Access: storage.AccessBlock, Mode: mode}, nil
	}
	return storage.Capability{}, fmt.Errorf("access_type (mount or block) is required: %w", storage.ErrInvalid)
}

// mountGroup reads volume_mount_group, which the kubelet fills with the pod's fsGroup
// in decimal: a group ID from 0 to 4294967294 ((gid_t)-1 means "no change" to chown).
func mountGroup(s string) (*uint32, error) {
	if s == "" {
		return nil, nil
	}
	g, err := strconv.ParseUint(s, 10, 32)
	if err != nil || g == math.MaxUint32 {
		return nil, fmt.Errorf("mount.volume_mount_group %q must be a decimal group ID (the pod's fsGroup), 0 to %d: %w",
			s, uint32(math.MaxUint32-1), storage.ErrInvalid)
	}
	gid := uint32(g)
	return &gid, nil
}

// ParseAll reads a request's capabilities, which must share one access type.
func ParseAll(caps []*csi.VolumeCapability) ([]storage.Capability, error) {
	if len(caps) == 0 {
		return nil, fmt.Errorf("volume_capabilities is required: %w", storage.ErrInvalid)
	}
	out := make([]storage.Capability, 0, len(caps))
	for i, c := range caps {
		pc, err := Parse(c)
		if err != nil {
			return nil, fmt.Errorf("volume_capabilities[%d]: %w", i, err)
		}
		if i > 0 && pc.Access != out[0].Access {
			return nil, fmt.Errorf("volume_capabilities mix mount and block access types: %w", storage.ErrInvalid)
		}
		out = append(out, pc)
	}
	return out, nil
}

// Check validates every capability for pool p and returns the one access type they
// share ("mount" or "block"). Errors wrap storage.ErrInvalid or storage.ErrUnsupported.
func Check(caps []*csi.VolumeCapability, p *storage.Pool) (string, error) {
	parsed, err := ParseAll(caps)
	if err != nil {
		return "", err
	}
	return p.CheckCapabilities(parsed)
}
