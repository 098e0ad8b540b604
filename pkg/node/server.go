// Package node serves the CSI Node service: bind mounts of pool volumes into pods,
// volume statistics and health, CSI ephemeral inline volumes.
package node

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/berth-csi/berth/pkg/locks"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TopologyKey is the topology segment naming this node.
const TopologyKey = "topology.berth.csi.io/node"

// Config is what the node service needs from the command line.
type Config struct {
	NodeID     string
	KubeletDir string // publish targets must lie under it
	MaxVolumes int64  // 0: no limit reported
}

// Server implements csi.NodeServer.
type Server struct {
	csi.UnimplementedNodeServer
	cfg    Config
	engine *storage.Engine
	locks  *locks.Set
}

// New returns a node server. The kubelet dir is resolved once, so a symlinked
// /var/lib/kubelet (common on some distributions) is compared by its real path.
func New(cfg Config, engine *storage.Engine, l *locks.Set) (*Server, error) {
	if !filepath.IsAbs(cfg.KubeletDir) {
		return nil, fmt.Errorf("kubelet dir %q must be absolute", cfg.KubeletDir)
	}
	real, err := filepath.EvalSymlinks(cfg.KubeletDir)
	if err != nil {
		return nil, fmt.Errorf("kubelet dir: %w", err)
	}
	cfg.KubeletDir = real
	return &Server{cfg: cfg, engine: engine, locks: l}, nil
}

var capabilities = []csi.NodeServiceCapability_RPC_Type{
	csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
	csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
	csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
	csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
}

// NodeGetCapabilities lists exactly what this node service implements.
func (s *Server) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	out := make([]*csi.NodeServiceCapability, 0, len(capabilities))
	for _, c := range capabilities {
		out = append(out, &csi.NodeServiceCapability{
			Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: c}},
		})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: out}, nil
}

// NodeGetInfo names the node, its volume limit and its topology.
func (s *Server) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             s.cfg.NodeID,
		MaxVolumesPerNode:  s.cfg.MaxVolumes,
		AccessibleTopology: &csi.Topology{Segments: map[string]string{TopologyKey: s.cfg.NodeID}},
	}, nil
}

// lock takes the volume's and the target's try-locks together, or answers Aborted.
func (s *Server) lock(volumeID, target string) (func(), error) {
	keys := []string{volumeID, "target:" + target}
	if !s.locks.TryAcquire(keys...) {
		return nil, status.Errorf(codes.Aborted, "an operation on volume %s or target %s is already in progress", volumeID, target)
	}
	return func() { s.locks.Release(keys...) }, nil
}

// checkVolumeID refuses an empty or hostile volume_id (InvalidArgument).
func checkVolumeID(id string) error {
	if id == "" {
		return status.Error(codes.InvalidArgument, "volume_id is required")
	}
	if err := storage.ValidateName(id); err != nil {
		return status.Errorf(codes.InvalidArgument, "volume_id: %v", err)
	}
	return nil
}

// beginUnmount validates an unpublish or unstage request's volume ID and path (field
// names it), refuses a path reached through a symlinked parent, and takes the
// volume's and the path's locks.
func (s *Server) beginUnmount(id, field, path string) (unlock func(), err error) {
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	rel, err := s.checkTarget(field, path)
	if err != nil {
		return nil, err
	}
	if err := s.checkParent(path, rel); err != nil {
		return nil, err
	}
	return s.lock(id, path)
}
