package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
)

// KindImage is a sparse image file per volume, attached to a loop device when the
// volume is staged: an exact size for filesystem volumes and raw block volumes alike.
const KindImage = "image"

// ParamFSType chooses the filesystem an image volume is formatted with.
const ParamFSType = "fsType"

// ImageFile is the name of an image volume's backing file inside its directory.
const ImageFile = "image"

// ImageFSTypes are the filesystems an image volume may be formatted with, the default
// first.
var ImageFSTypes = []string{DefaultImageFSType, "xfs"}

// DefaultImageFSType formats image volumes that ask for no filesystem.
const DefaultImageFSType = "ext4"

// imageAlign is the granularity of image sizes: loop devices and filesystems work in
// sectors, and 4 KiB keeps every common request (Mi, Gi) exact.
const imageAlign = 4096

func init() {
	backends[KindImage] = func(_ PoolConfig, h Host) Backend { return imageBackend{host: h} }
}

type imageBackend struct{ host Host }

func (imageBackend) SupportsBlock() bool { return true }

func (imageBackend) MultiNode() bool { return false }

func (imageBackend) Params() []string { return []string{ParamFSType} }

func (imageBackend) Filesystems() []string { return ImageFSTypes }

func (imageBackend) Data() (string, bool) { return ImageFile, false }

// Check makes sure loop devices can be had on this node.
func (b imageBackend) Check(context.Context, *Pool) error { return b.host.Loops.Available() }

// alignImage rounds a size up to the image granularity.
func alignImage(n int64) int64 { return (n + imageAlign - 1) / imageAlign * imageAlign }

func (imageBackend) Build(_ context.Context, _ *Pool, r *Record, volDir string) error {
	if r.AccessType == AccessMount {
		if r.FSType == "" {
			r.FSType = DefaultImageFSType
		}
		if !slices.Contains(ImageFSTypes, r.FSType) {
			return fmt.Errorf("fsType %q is not supported (use one of %v): %w", r.FSType, ImageFSTypes, ErrInvalid)
		}
	}
	r.CapacityBytes = alignImage(r.CapacityBytes)
	path := filepath.Join(volDir, ImageFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("create image: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(r.CapacityBytes); err != nil {
		return fmt.Errorf("size image %s: %w", path, err)
	}
	return f.Sync()
}

// Usage of an unstaged image is its allocated blocks; the node reports the mounted
// filesystem's figures instead when the volume is staged.
func (imageBackend) Usage(_ context.Context, _ *Pool, r *Record, volDir string) (Usage, error) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(volDir, ImageFile), &st); err != nil {
		return Usage{}, fmt.Errorf("stat image of %s: %w", r.ID, err)
	}
	used := st.Blocks * 512
	return Usage{TotalBytes: r.CapacityBytes, UsedBytes: used, AvailableBytes: max(r.CapacityBytes-used, 0)}, nil
}

// Expand grows the image file; the node then refreshes the loop device and grows
// the filesystem. A file already large enough is left alone (retries are harmless).
func (imageBackend) Expand(_ context.Context, _ *Pool, r *Record, volDir string, newBytes int64) error {
	path := filepath.Join(volDir, ImageFile)
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open image of %s: %w", r.ID, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() >= newBytes {
		return nil
	}
	if err := f.Truncate(alignImage(newBytes)); err != nil {
		return fmt.Errorf("grow image of %s: %w", r.ID, err)
	}
	return f.Sync()
}

func (imageBackend) Release(context.Context, *Pool, *Record) error { return nil }

// InUse refuses to delete an image still attached to a loop device (still staged).
func (b imageBackend) InUse(_ context.Context, _ *Pool, r *Record, volDir string) error {
	dev, err := b.host.Loops.Find(filepath.Join(volDir, ImageFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if dev != nil {
		return fmt.Errorf("volume %s is still staged on %s: %w", r.ID, dev.Path, ErrInUse)
	}
	return nil
}

// Full is judged by the node on the mounted filesystem.
func (imageBackend) Full(context.Context, *Pool, *Record, string) (bool, error) { return false, nil }

// SizeStep: images are sized in whole 4 KiB blocks.
func (imageBackend) SizeStep() int64 { return imageAlign }
