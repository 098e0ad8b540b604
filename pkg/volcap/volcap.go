// Package volcap checks CSI volume capabilities against what a pool can serve. The
// controller and the node service share it so both refuse the same things.
package volcap

import (
	"fmt"

	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
)

// Access modes a node-local pool serves.
var nodeLocal = map[csi.VolumeCapability_AccessMode_Mode]bool{
	csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER:        true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:   true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER: true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:  true,
}

// Access modes a shared pool serves: every node mounts its root, so every mode.
// MULTI_NODE_SINGLE_WRITER's "one writer" across nodes is the CO's to enforce: with
// no attach step, no node knows where else the volume is published.
var multiNode = map[csi.VolumeCapability_AccessMode_Mode]bool{
	csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER:        true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:   true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER: true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:  true,
	csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:    true,
	csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER:  true,
	csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER:   true,
}

// Modes returns the access modes a pool of kind serves.
func Modes(kind string) map[csi.VolumeCapability_AccessMode_Mode]bool {
	if kind == storage.KindShared {
		return multiNode
	}
	return nodeLocal
}

// Check validates every capability for pool p and returns the one access type they
// share ("mount" or "block"). Errors wrap storage.ErrInvalid or storage.ErrUnsupported.
func Check(caps []*csi.VolumeCapability, p *storage.Pool) (string, error) {
	if len(caps) == 0 {
		return "", fmt.Errorf("volume_capabilities is required: %w", storage.ErrInvalid)
	}
	access := ""
	for i, c := range caps {
		t, err := checkOne(c, p)
		if err != nil {
			return "", fmt.Errorf("volume_capabilities[%d]: %w", i, err)
		}
		if access != "" && t != access {
			return "", fmt.Errorf("volume_capabilities mix mount and block access types: %w", storage.ErrInvalid)
		}
		access = t
	}
	return access, nil
}

// CheckOne validates a single capability (NodePublishVolume's) for pool p.
func CheckOne(c *csi.VolumeCapability, p *storage.Pool) (string, error) {
	if c == nil {
		return "", fmt.Errorf("volume_capability is required: %w", storage.ErrInvalid)
	}
	return checkOne(c, p)
}

func checkOne(c *csi.VolumeCapability, p *storage.Pool) (string, error) {
	if c == nil {
		return "", fmt.Errorf("capability is empty: %w", storage.ErrInvalid)
	}
	mode := c.GetAccessMode().GetMode()
	switch {
	case c.GetAccessMode() == nil || mode == csi.VolumeCapability_AccessMode_UNKNOWN:
		return "", fmt.Errorf("access_mode is required: %w", storage.ErrInvalid)
	case !Modes(p.Kind())[mode]:
		return "", fmt.Errorf("access mode %s is not supported by node-local pool %s: %w", mode, p.Name(), storage.ErrUnsupported)
	}
	switch {
	case c.GetMount() != nil:
		return storage.AccessMount, nil
	case c.GetBlock() != nil:
		if !p.SupportsBlock() {
			return "", fmt.Errorf("block access type is not supported by pool %s (kind %s): %w", p.Name(), p.Config().Kind, storage.ErrUnsupported)
		}
		return storage.AccessBlock, nil
	}
	return "", fmt.Errorf("access_type (mount or block) is required: %w", storage.ErrInvalid)
}

// SingleWriter reports whether the capability allows one writer on one target only.
func SingleWriter(c *csi.VolumeCapability) bool {
	return c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
}

// ReaderOnly reports whether the capability's access mode forbids writes.
func ReaderOnly(c *csi.VolumeCapability) bool {
	m := c.GetAccessMode().GetMode()
	return m == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY ||
		m == csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
}
