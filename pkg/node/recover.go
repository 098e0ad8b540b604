package node

import (
	"fmt"

	"context"
	"github.com/berth-csi/berth/pkg/storage/loop"
	"golang.org/x/sys/unix"
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
		if p.Health() != nil {
			continue // not served (a shared pool whose filesystem could not be mounted)
		}
		if p.Kind() == storage.KindImage {
			if err := s.recoverImages(ctx, p, mounts); err != nil {
				return err
			}
			continue
		}
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

var imageBacking = regexp.MustCompile(`/volumes/([0-9a-f]{32})/image( \(deleted\))?$`)

// recoverImages reconciles an image pool's loop devices with its staging records: a
// device backing a volume that is not staged is a leftover of a stage that never
// recorded its intent (or of an unstage that crashed after clearing it) and is
// detached, so devices always match staged volumes. The mounts of a staged volume's
// device, other than its staging mount, are its publications.
func (s *Server) recoverImages(ctx context.Context, p *storage.Pool, mounts []*mounter.MountInfo) error {
	logger := klog.FromContext(ctx).WithValues("pool", p.Name())
	devs, err := loop.List(filepath.Join(p.Config().Path, "volumes"))
	if err != nil {
		return err
	}
	for _, d := range devs {
		var r *storage.Record
		var st *storage.Staging
		if sub := imageBacking.FindStringSubmatch(d.BackingFile); sub != nil {
			r, _ = p.Get(sub[1])
			if r != nil {
				st, _ = p.Staged(r.Hash())
			}
		}
		if r == nil || st == nil {
			if err := loop.Detach(d); err != nil {
				logger.Error(err, "Cannot detach leftover loop device", "device", d.Path, "backingFile", d.BackingFile)
			} else {
				logger.Info("Detached leftover loop device", "device", d.Path, "backingFile", d.BackingFile)
			}
			continue
		}
		var rdev unix.Stat_t
		if err := unix.Stat(d.Path, &rdev); err != nil {
			return fmt.Errorf("stat %s: %w", d.Path, err)
		}
		major, minor := int(unix.Major(rdev.Rdev)), int(unix.Minor(rdev.Rdev))
		for _, m := range mounts {
			fsMount := m.Major == major && m.Minor == minor && m.Mountpoint != st.Path
			blockBind := m.FSType == "devtmpfs" && m.Root == "/"+filepath.Base(d.Path)
			if !fsMount && !blockBind {
				continue
			}
			s.engine.AddPublication(r.ID, storage.Publication{TargetPath: m.Mountpoint, ReadOnly: m.ReadOnly})
			logger.V(2).Info("Publication recovered", "volumeID", r.ID, "targetPath", m.Mountpoint)
		}
	}
	return nil
}
