package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// floorRecord is a stand-in for a volume record: about 300 bytes of JSON.
var floorRecord = []byte(`{"version":1,"name":"pvc-00000000-0000-0000-0000-000000000000",` +
	`"id":"default-0123456789abcdef0123456789abcdef","pool":"default","sizeBytes":1073741824,` +
	`"accessType":"mount","fsType":"","parameters":{"pool":"default"},` +
	`"createdAt":"2026-01-01T00:00:00Z","state":"committed","source":null,"labels":{}}` + "\n")

// durableFloor performs, single-threaded, the least file-system work with
// which a volume can be created and deleted durably, so that the driver's
// controller throughput can be compared with what the disk allows.
type durableFloor struct {
	root              string
	tmp, vols, trash  string
	volsDir, trashDir *os.File // kept open: the floor pays no open() for parents
}

// newDurableFloor lays out tmp/, volumes/ and trash/ under root, as a pool has.
func newDurableFloor(root string) (*durableFloor, error) {
	f := &durableFloor{
		root:  root,
		tmp:   filepath.Join(root, "tmp"),
		vols:  filepath.Join(root, "volumes"),
		trash: filepath.Join(root, "trash"),
	}
	for _, d := range []string{f.tmp, f.vols, f.trash} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, err
		}
	}
	var err error
	if f.volsDir, err = os.Open(f.vols); err != nil {
		return nil, err
	}
	if f.trashDir, err = os.Open(f.trash); err != nil {
		f.volsDir.Close()
		return nil, err
	}
	if err := syncDir(f.root); err != nil {
		f.close()
		return nil, err
	}
	return f, nil
}

func (f *durableFloor) close() {
	f.volsDir.Close()
	f.trashDir.Close()
}

// create builds a volume in tmp/ (directory, data/, record written to a temp
// file, fsynced, renamed, directory fsynced), then commits it by renaming it
// into volumes/ and fsyncing volumes/.
func (f *durableFloor) create(name string) error {
	build := filepath.Join(f.tmp, name)
	if err := os.Mkdir(build, 0o750); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(build, "data"), 0o750); err != nil {
		return err
	}
	tmpRec := filepath.Join(build, "record.json.tmp")
	rec, err := os.OpenFile(tmpRec, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := rec.Write(floorRecord); err != nil {
		rec.Close()
		return err
	}
	if err := rec.Sync(); err != nil {
		rec.Close()
		return err
	}
	if err := rec.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmpRec, filepath.Join(build, "record.json")); err != nil {
		return err
	}
	if err := syncDir(build); err != nil {
		return err
	}
	if err := os.Rename(build, filepath.Join(f.vols, name)); err != nil {
		return err
	}
	return f.volsDir.Sync()
}

// remove deletes a volume durably: rename it into trash/ and fsync volumes/
// (from here the volume is gone even after a crash), then purge it.
func (f *durableFloor) remove(name string) error {
	gone := filepath.Join(f.trash, name)
	if err := os.Rename(filepath.Join(f.vols, name), gone); err != nil {
		return err
	}
	if err := f.volsDir.Sync(); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(gone, "record.json")); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(gone, "data")); err != nil {
		return err
	}
	return os.Remove(gone)
}

// run performs n create+delete pairs and returns the elapsed time.
func (f *durableFloor) run(ctx context.Context, prefix string, n int) (time.Duration, error) {
	start := time.Now()
	for i := range n {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		name := fmt.Sprintf("%s-%06d", prefix, i)
		if err := f.create(name); err != nil {
			return 0, fmt.Errorf("floor create %s: %w", name, err)
		}
		if err := f.remove(name); err != nil {
			return 0, fmt.Errorf("floor delete %s: %w", name, err)
		}
	}
	return time.Since(start), nil
}

func syncDir(path string) error {
	d, err := os.Open(path)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		d.Close()
		return err
	}
	return d.Close()
}

// rawMountFloor bind-mounts src on tgt and unmounts it n times, returning
// the latency of each mount+unmount pair. tgt must exist.
//
// With full, each iteration does the least a publish+unpublish that follows
// the spec must do (rawPublish, then rawUnpublish), and tgt must not exist.
func rawMountFloor(ctx context.Context, src, tgt string, n int, full bool) ([]time.Duration, error) {
	pairs := make([]time.Duration, 0, n)
	for range n {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if full {
			pub, unpub, err := rawPublishUnpublish(src, tgt)
			if err != nil {
				return nil, err
			}
			pairs = append(pairs, pub+unpub)
			continue
		}
		start := time.Now()
		if err := unix.Mount(src, tgt, "", unix.MS_BIND, ""); err != nil {
			return nil, fmt.Errorf("bind mount %s on %s: %w", src, tgt, err)
		}
		if err := unix.Unmount(tgt, 0); err != nil {
			return nil, fmt.Errorf("unmount %s: %w", tgt, err)
		}
		pairs = append(pairs, time.Since(start))
	}
	return pairs, nil
}

// rawPublishUnpublish times, apart, the least a publish that follows the spec
// must do (create tgt, which must not exist; bind-mount src there; remount it
// nosuid,nodev, as the kernel ignores those flags on the bind itself) and the
// least its unpublish must do (unmount and remove tgt).
func rawPublishUnpublish(src, tgt string) (pub, unpub time.Duration, err error) {
	t0 := time.Now()
	if err := unix.Mkdir(tgt, 0o750); err != nil {
		return 0, 0, fmt.Errorf("mkdir %s: %w", tgt, err)
	}
	if err := unix.Mount(src, tgt, "", unix.MS_BIND, ""); err != nil {
		return 0, 0, fmt.Errorf("bind mount %s on %s: %w", src, tgt, err)
	}
	if err := unix.Mount("", tgt, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		_ = unix.Unmount(tgt, unix.MNT_DETACH)
		return 0, 0, fmt.Errorf("remount %s nosuid,nodev: %w", tgt, err)
	}
	t1 := time.Now()
	if err := unix.Unmount(tgt, 0); err != nil {
		return 0, 0, fmt.Errorf("unmount %s: %w", tgt, err)
	}
	if err := unix.Rmdir(tgt); err != nil {
		return 0, 0, fmt.Errorf("rmdir %s: %w", tgt, err)
	}
	return t1.Sub(t0), time.Since(t1), nil
}

// fsName names the file system holding path and reports whether it is
// memory-backed, where fsync costs nothing and the figures mean little.
func fsName(path string) (name string, inMemory bool, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "", false, fmt.Errorf("statfs %s: %w", path, err)
	}
	switch int64(st.Type) {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4", false, nil
	case unix.XFS_SUPER_MAGIC:
		return "xfs", false, nil
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs", false, nil
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlay", false, nil
	case unix.TMPFS_MAGIC:
		return "tmpfs", true, nil
	case unix.RAMFS_MAGIC:
		return "ramfs", true, nil
	default:
		return fmt.Sprintf("0x%x", st.Type), false, nil
	}
}
