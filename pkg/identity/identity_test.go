package identity

import (
	"context"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

func services(t *testing.T, s *Server) map[csi.PluginCapability_Service_Type]bool {
	t.Helper()
	resp, err := s.GetPluginCapabilities(context.Background(), &csi.GetPluginCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[csi.PluginCapability_Service_Type]bool{}
	for _, c := range resp.GetCapabilities() {
		if svc := c.GetService(); svc != nil {
			out[svc.GetType()] = true
		}
	}
	return out
}

// TestSnapshotMetadataCapability: SNAPSHOT_METADATA_SERVICE is advertised by a
// controller whose served func says a pool can answer, asked at every call, and
// never by a node-only process.
func TestSnapshotMetadataCapability(t *testing.T) {
	served := false
	s := New("berth.example.com", true, func() bool { return true })
	if services(t, s)[csi.PluginCapability_Service_SNAPSHOT_METADATA_SERVICE] {
		t.Error("advertised without SetSnapshotMetadata")
	}
	s.SetSnapshotMetadata(func() bool { return served })
	if services(t, s)[csi.PluginCapability_Service_SNAPSHOT_METADATA_SERVICE] {
		t.Error("advertised while no pool can serve it")
	}
	served = true
	if !services(t, s)[csi.PluginCapability_Service_SNAPSHOT_METADATA_SERVICE] {
		t.Error("not advertised once a pool can serve it")
	}
	node := New("berth.example.com", false, func() bool { return true })
	node.SetSnapshotMetadata(func() bool { return true })
	if services(t, node)[csi.PluginCapability_Service_SNAPSHOT_METADATA_SERVICE] {
		t.Error("advertised by a process without the controller service")
	}
}
