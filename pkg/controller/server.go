// Package controller serves the CSI Controller service for the pools of this node.
package controller

import (
	"context"
	"fmt"
	"slices"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/locks"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
)

// TopologyKey is the topology segment every node-local volume carries.
const TopologyKey = storage.TopologyKey

// Server implements csi.ControllerServer on top of the storage engine.
type Server struct {
	csi.UnimplementedControllerServer
	engine *storage.Engine
	nodeID string
	locks  *locks.Set
}

// New returns a controller serving engine's pools as node nodeID. locks is shared with
// the node service so controller and node work on one volume exclude each other.
func New(engine *storage.Engine, nodeID string, l *locks.Set) *Server {
	return &Server{engine: engine, nodeID: nodeID, locks: l}
}

var capabilities = []csi.ControllerServiceCapability_RPC_Type{
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
	csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
	csi.ControllerServiceCapability_RPC_GET_CAPACITY,
	csi.ControllerServiceCapability_RPC_GET_VOLUME,
	csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
	csi.ControllerServiceCapability_RPC_LIST_VOLUME_HEALTH,
	csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
	csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
	csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
	csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
}

// ControllerGetCapabilities lists exactly what this controller implements: MODIFY_VOLUME
// only when some pool's kind has mutable parameters.
func (s *Server) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	caps := capabilities
	if s.engine.Modifiable() {
		caps = append(slices.Clip(caps), csi.ControllerServiceCapability_RPC_MODIFY_VOLUME)
	}
	out := make([]*csi.ControllerServiceCapability, 0, len(caps))
	for _, c := range caps {
		out = append(out, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: c}},
		})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: out}, nil
}

// lock takes the try-locks of a volume or snapshot ID (and any further keys), all or
// none; when another operation holds one, the answer is Aborted at once.
func (s *Server) lock(id string, more ...string) (func(), error) {
	return tryLock(s.locks, id, more...)
}

func tryLock(l *locks.Set, id string, more ...string) (func(), error) {
	keys := append([]string{id}, more...)
	if !l.TryAcquire(keys...) {
		return nil, csierr.Status(fmt.Errorf("an operation on %s is already in progress: %w", id, storage.ErrBusy))
	}
	return func() { l.Release(keys...) }, nil
}

// topology is where a volume of pool is accessible: this node for node-local pools;
// anywhere (no constraint) for shared pools, whose root every node mounts.
func (s *Server) topology(pool string) []*csi.Topology {
	if p, err := s.engine.Pool(pool); err == nil && p.Shared() {
		return nil
	}
	return []*csi.Topology{{Segments: map[string]string{TopologyKey: s.nodeID}}}
}

// publishedOn lists the nodes a volume is mounted on (informative: Berth has no
// ControllerPublish, so LIST_VOLUMES_PUBLISHED_NODES is not advertised).
func (s *Server) publishedOn(id string) []string {
	if len(s.engine.Publications(id)) > 0 {
		return []string{s.nodeID}
	}
	return nil
}

func (s *Server) volume(r *storage.Record) *csi.Volume {
	v := &csi.Volume{
		VolumeId:           r.ID,
		CapacityBytes:      r.CapacityBytes,
		AccessibleTopology: s.topology(r.Pool),
		VolumeContext:      map[string]string{"pool": r.Pool},
	}
	if src := r.ContentSource; src != nil {
		switch src.Kind {
		case "snapshot":
			v.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
				Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: src.ID}}}
		case "volume":
			v.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
				Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.ID}}}
		}
	}
	return v
}
