// Package identity serves the CSI Identity service.
package identity

import (
	"context"

	"github.com/berth-csi/berth/pkg/version"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Server answers GetPluginInfo, GetPluginCapabilities and Probe.
type Server struct {
	csi.UnimplementedIdentityServer
	name       string
	controller bool
	ready      func() bool
	groups     func() bool // nil: no group snapshots
	metadata   func() bool // nil: no SnapshotMetadata service
}

// New returns an identity server for driver name; ready reports start-up completion;
// controller says whether this process serves the controller service.
func New(name string, controller bool, ready func() bool) *Server {
	return &Server{name: name, controller: controller, ready: ready}
}

// SetGroupSnapshots makes GetPluginCapabilities advertise the GroupController
// service (beside the controller's) whenever served reports that group snapshots
// can be taken here. Asked at every call: whether a pool can take them is known
// once start-up has probed its filesystem.
func (s *Server) SetGroupSnapshots(served func() bool) { s.groups = served }

// SetSnapshotMetadata makes GetPluginCapabilities advertise the SnapshotMetadata
// service (changed-block tracking) whenever served reports that some pool can
// answer it, asked at every call like SetGroupSnapshots.
func (s *Server) SetSnapshotMetadata(served func() bool) { s.metadata = served }

func (s *Server) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: s.name, VendorVersion: version.Get()}, nil
}

func (s *Server) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	svc := func(t csi.PluginCapability_Service_Type) *csi.PluginCapability {
		return &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}}}
	}
	// Volumes grow while in use; Berth expands on the node (NodeExpandVolume) only.
	online := &csi.PluginCapability{Type: &csi.PluginCapability_VolumeExpansion_{
		VolumeExpansion: &csi.PluginCapability_VolumeExpansion{Type: csi.PluginCapability_VolumeExpansion_ONLINE}}}
	caps := []*csi.PluginCapability{svc(csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS), online}
	if s.controller {
		caps = append([]*csi.PluginCapability{svc(csi.PluginCapability_Service_CONTROLLER_SERVICE)}, caps...)
		if s.groups != nil && s.groups() {
			caps = append(caps, svc(csi.PluginCapability_Service_GROUP_CONTROLLER_SERVICE))
		}
		if s.metadata != nil && s.metadata() {
			caps = append(caps, svc(csi.PluginCapability_Service_SNAPSHOT_METADATA_SERVICE))
		}
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

// Probe is ready only once start-up reconciliation has finished.
func (s *Server) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(s.ready())}, nil
}
