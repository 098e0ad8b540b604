package node

import (
	"context"
	"path/filepath"
	"regexp"

	"github.com/berth-csi/berth/pkg/mounter"
	"github.com/berth-csi/berth/pkg/storage"
	"k8s.io/klog/v2"
)

var volumeDataRoot = regexp.MustCompile(`/volumes/([0-9a-f]{32})/data$`)

// Recover rebuilds the publication table from the mount table, the only authority on
// what is mounted: after a restart, every bind mount of a volume's data directory is a
// publication, whatever the driver remembered before.
func (s *Server) Recover(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	mounts, err := mounter.All()
	if err != nil {
		return err
	}
	for _, p := range s.engine.Pools() {
		major, minor, root, err := mounter.Locate(filepath.Join(p.Config().Path, "volumes"))
		if err != nil {
			return err
		}
		for _, m := range mounts {
			if m.Major != major || m.Minor != minor || filepath.Dir(filepath.Dir(m.Root)) != filepath.Clean(root) {
				continue
			}
			sub := volumeDataRoot.FindStringSubmatch(m.Root)
			if sub == nil {
				continue
			}
			r, err := p.Get(sub[1])
			if err != nil {
				continue
			}
			id := r.ID
			if r.Ephemeral {
				id = r.Name[len(storage.EphemeralName("")):]
			}
			s.engine.AddPublication(id, storage.Publication{TargetPath: m.Mountpoint, ReadOnly: m.ReadOnly})
			logger.V(2).Info("Publication recovered", "volumeID", id, "targetPath", m.Mountpoint)
		}
	}
	return nil
}
