package storage

import "fmt"

// AccessMode is how a volume is to be used, in the terms of CSI's access modes.
type AccessMode int

// Access modes, as CSI names them.
const (
	ModeUnknown AccessMode = iota
	SingleNodeWriter
	SingleNodeReaderOnly
	SingleNodeSingleWriter
	SingleNodeMultiWriter
	MultiNodeReaderOnly
	MultiNodeSingleWriter
	MultiNodeMultiWriter
)

var modeNames = [...]string{"UNKNOWN", "SINGLE_NODE_WRITER", "SINGLE_NODE_READER_ONLY",
	"SINGLE_NODE_SINGLE_WRITER", "SINGLE_NODE_MULTI_WRITER", "MULTI_NODE_READER_ONLY",
	"MULTI_NODE_SINGLE_WRITER", "MULTI_NODE_MULTI_WRITER"}

func (m AccessMode) String() string {
	if m < 0 || int(m) >= len(modeNames) {
		return fmt.Sprintf("AccessMode(%d)", int(m))
	}
	return modeNames[m]
}

// MultiNode reports a mode that lets several nodes use the volume at once.
func (m AccessMode) MultiNode() bool { return m >= MultiNodeReaderOnly }

// ReaderOnly reports a mode that forbids writes.
func (m AccessMode) ReaderOnly() bool { return m == SingleNodeReaderOnly || m == MultiNodeReaderOnly }

// SingleWriter reports a mode that allows one writer on one target only.
func (m AccessMode) SingleWriter() bool { return m == SingleNodeSingleWriter }

// Capability is one way a volume is asked to be used: its access type and mode, and
// for a filesystem volume the filesystem and mount flags asked for, and the group the
// pod's files must belong to.
type Capability struct {
	Access     string // AccessMount or AccessBlock
	Mode       AccessMode
	FSType     string
	MountFlags []string
	// MountGroup is the CSI volume_mount_group (with VOLUME_MOUNT_GROUP, the kubelet
	// sends the pod's fsGroup there and leaves applying it to the driver): the group
	// ID a publish gives the volume's files (fsgroup.go). nil: none asked.
	MountGroup *uint32
}

// CheckCapability validates a capability for the pool: a known mode its kind serves
// (every node mounts a shared pool; other kinds live on one node) and an access type
// it can serve. Errors wrap ErrInvalid or ErrUnsupported.
func (p *Pool) CheckCapability(c Capability) error {
	switch {
	case c.Mode <= ModeUnknown || int(c.Mode) >= len(modeNames):
		return fmt.Errorf("access_mode is required: %w", ErrInvalid)
	case c.Mode.MultiNode() && !p.backend.MultiNode():
		return fmt.Errorf("access mode %s is not supported by node-local pool %s: %w", c.Mode, p.cfg.Name, ErrUnsupported)
	case c.Access == AccessBlock && !p.backend.SupportsBlock():
		return fmt.Errorf("block access type is not supported by pool %s (kind %s): %w", p.cfg.Name, p.kind, ErrUnsupported)
	case c.Access != AccessMount && c.Access != AccessBlock:
		return fmt.Errorf("access_type (mount or block) is required: %w", ErrInvalid)
	}
	return nil
}

// CheckCapabilities validates every capability a request names for the pool and
// returns the access type they share. Errors wrap ErrInvalid or ErrUnsupported.
func (p *Pool) CheckCapabilities(cs []Capability) (string, error) {
	if len(cs) == 0 {
		return "", fmt.Errorf("volume_capabilities is required: %w", ErrInvalid)
	}
	for i, c := range cs {
		if err := p.CheckCapability(c); err != nil {
			return "", fmt.Errorf("volume_capabilities[%d]: %w", i, err)
		}
		if c.Access != cs[0].Access {
			return "", fmt.Errorf("volume_capabilities mix mount and block access types: %w", ErrInvalid)
		}
	}
	return cs[0].Access, nil
}
