// Package node serves the CSI Node service: bind mounts of pool volumes into pods,
// volume statistics and health, CSI ephemeral inline volumes. Each handler validates
// the request, takes the volume's (and path's) try-lock, makes one call to the
// engine's node side (storage.Node) and maps its error to a code in pkg/csierr.
package node

import (
	"context"
	"fmt"
	"time"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/locks"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/volcap"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TopologyKey is the topology segment naming this node.
const TopologyKey = storage.TopologyKey

// AttrPath is the volume attribute naming an adopted host directory.
const AttrPath = storage.AttrPath

// AttrResyncFrom is the volume attribute of a moved volume naming the volume it
// was cloned from, whose changes NodeStageVolume brings over first.
const AttrResyncFrom = storage.AttrResyncFrom

// Config is what the node service needs from the command line.
type Config struct {
	NodeID     string
	KubeletDir string // publish targets must lie under it
	MaxVolumes int64  // 0: no limit reported
	// ClaimGrace is how long another node's single-node claim of a shared volume is
	// honoured once its lock is free (0: storage.DefaultClaimGrace).
	ClaimGrace time.Duration
}

// Server implements csi.NodeServer.
type Server struct {
	csi.UnimplementedNodeServer
	cfg   Config
	node  *storage.Node
	locks *locks.Set
}

// New returns a node server publishing engine's volumes under cfg.KubeletDir.
func New(cfg Config, engine *storage.Engine, l *locks.Set) (*Server, error) {
	n, err := engine.Node(storage.NodeConfig{KubeletDir: cfg.KubeletDir, NodeID: cfg.NodeID, ClaimGrace: cfg.ClaimGrace})
	if err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, node: n, locks: l}, nil
}

// Recover rebuilds the engine's publication table from the mount table at start-up.
func (s *Server) Recover(ctx context.Context) error { return s.node.Recover(ctx) }

// KeepIOLimits writes the pods' per-volume I/O limits again and again until ctx
// ends (storage/nodeio.go); run it after Recover.
func (s *Server) KeepIOLimits(ctx context.Context) { s.node.KeepIOLimits(ctx) }

var capabilities = []csi.NodeServiceCapability_RPC_Type{
	csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
	csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
	csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
	csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
	// The kubelet then passes a pod's fsGroup as volume_mount_group and leaves its
	// application to the driver, per volume: Berth's own volumes get it, an adopted
	// host directory's ownership is never rewritten (storage/fsgroup.go).
	csi.NodeServiceCapability_RPC_VOLUME_MOUNT_GROUP,
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

// lock takes the try-locks of a volume and, when path is not empty, of a path,
// all or none; when another operation holds one, the answer is Aborted at once.
func (s *Server) lock(volumeID, path string) (func(), error) {
	keys := []string{volumeID}
	if path != "" {
		keys = append(keys, "path:"+path)
	}
	if !s.locks.TryAcquire(keys...) {
		what := "volume " + volumeID
		if path != "" {
			what += " or path " + path
		}
		return nil, csierr.Status(fmt.Errorf("an operation on %s is already in progress: %w", what, storage.ErrBusy))
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

// capability reads the request's volume_capability (required) in the engine's terms.
func capability(vc *csi.VolumeCapability) (storage.Capability, error) {
	if vc == nil {
		return storage.Capability{}, status.Error(codes.InvalidArgument, "volume_capability is required")
	}
	c, err := volcap.Parse(vc)
	if err != nil {
		return c, csierr.Status(fmt.Errorf("volume_capability: %w", err))
	}
	return c, nil
}

// required refuses a request without the path field names.
func required(field, value string) error {
	if value == "" {
		return status.Errorf(codes.InvalidArgument, "%s is required", field)
	}
	return nil
}
