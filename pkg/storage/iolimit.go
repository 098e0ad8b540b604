package storage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/berth-csi/berth/pkg/storage/iothrottle"
)

// Per-pod I/O limits are mutable parameters of the kinds whose volumes lie on a
// block device: the loop device of an image volume, the pool's own device for a
// dir or quota volume. The node writes them into the cgroup of every pod that
// publishes the volume (nodeio.go); the kind itself applies nothing.
const (
	// ParamReadBytesPerSecond caps each pod's reads, in bytes per second: a
	// quantity (10Mi, 500k...); "0" is no limit.
	ParamReadBytesPerSecond = "readBytesPerSecond"
	// ParamWriteBytesPerSecond caps each pod's writes, in bytes per second.
	ParamWriteBytesPerSecond = "writeBytesPerSecond"
	// ParamReadIOPS caps each pod's read operations per second: an integer.
	ParamReadIOPS = "readIOPS"
	// ParamWriteIOPS caps each pod's write operations per second.
	ParamWriteIOPS = "writeIOPS"
)

// ioParams are the mutable parameters of per-pod I/O limits.
var ioParams = []string{ParamReadBytesPerSecond, ParamWriteBytesPerSecond, ParamReadIOPS, ParamWriteIOPS}

// ioBackend is a kind whose volumes' I/O can be throttled: it says on which device.
type ioBackend interface {
	// ioDevice is the block device a volume's I/O goes through on this node.
	ioDevice(p *Pool, r *Record) (iothrottle.Device, error)
	// checkIODevice refuses a pool whose storage lies on no block device.
	checkIODevice(p *Pool) error
}

// parseIOParam reads the value of an I/O limit: a byte quantity for rates in bytes,
// a plain integer for operations; 0 is no limit.
func parseIOParam(key, value string) (uint64, error) {
	switch key {
	case ParamReadBytesPerSecond, ParamWriteBytesPerSecond:
		n, err := ParseQuantity(value)
		if err != nil || n < 0 {
			return 0, errorf(ErrInvalid, "parameter %s=%q must be a number of bytes per second (an integer or a quantity such as 10Mi; 0: no limit)", key, truncate(value))
		}
		return uint64(n), nil
	}
	n, err := strconv.ParseUint(value, 10, 64)
	if err != nil {
		return 0, errorf(ErrInvalid, "parameter %s=%q must be a non-negative integer of operations per second (0: no limit)", key, truncate(value))
	}
	return n, nil
}

// checkIOParam validates the value of an I/O limit (the pool's device was checked
// with its mutable parameters, MutableParams).
func checkIOParam(_ *Pool, key, value string) error {
	_, err := parseIOParam(key, value)
	return err
}

// noIODevice says why the pool's volumes cannot have I/O limits: its kind has none,
// or its storage lies on no block device (a tmpfs, an overlay). A pool whose path
// cannot be looked at now (not served yet) is not refused here: its modifications
// fail as it does.
func (p *Pool) noIODevice() error {
	b, ok := p.backend.(ioBackend)
	if !ok {
		return fmt.Errorf("pool kind %s throttles no device", p.kind)
	}
	if err := b.checkIODevice(p); errors.Is(err, iothrottle.ErrNoDevice) {
		return err
	}
	return nil
}

// ioLimits are the volume's per-pod I/O limits (its mutable parameters, else its
// StorageClass's), and whether any key names one (even as 0).
func ioLimits(r *Record) (iothrottle.Limits, bool, error) {
	var l iothrottle.Limits
	named := false
	for _, f := range []struct {
		key string
		v   *uint64
	}{
		{ParamReadBytesPerSecond, &l.ReadBPS}, {ParamWriteBytesPerSecond, &l.WriteBPS},
		{ParamReadIOPS, &l.ReadIOPS}, {ParamWriteIOPS, &l.WriteIOPS},
	} {
		v, ok := r.param(f.key)
		if !ok {
			continue
		}
		named = true
		n, err := parseIOParam(f.key, v)
		if err != nil {
			return l, named, err
		}
		*f.v = n
	}
	return l, named, nil
}

// namesIO reports whether params name an I/O limit.
func namesIO(params map[string]string) bool {
	for k := range params {
		if slices.Contains(ioParams, k) {
			return true
		}
	}
	return false
}

// poolDevice is the block device a dir or quota pool's filesystem lies on.
func poolDevice(p *Pool) (iothrottle.Device, error) { return iothrottle.DeviceOf(p.cfg.Path) }

// The dir kind (and quota, which embeds its checks below): the pool's device.

func (dirBackend) ioDevice(p *Pool, _ *Record) (iothrottle.Device, error) { return poolDevice(p) }

func (dirBackend) checkIODevice(p *Pool) error {
	_, err := poolDevice(p)
	return err
}

// MutableParams: a dir volume's per-pod I/O limits.
func (dirBackend) MutableParams() []string { return ioParams }

// CheckMutable validates an I/O limit.
func (dirBackend) CheckMutable(p *Pool, key, value string) error { return checkIOParam(p, key, value) }

// Modify: the node applies I/O limits to the pods (nodeio.go); nothing is kept in
// the pool.
func (dirBackend) Modify(context.Context, *Pool, *Record, string) error { return nil }

func (quotaBackend) ioDevice(p *Pool, _ *Record) (iothrottle.Device, error) { return poolDevice(p) }

func (quotaBackend) checkIODevice(p *Pool) error {
	_, err := poolDevice(p)
	return err
}

// The image kind: the loop device the image is attached to on this node.

func (b imageBackend) ioDevice(p *Pool, r *Record) (iothrottle.Device, error) {
	dev, err := b.host.Loops.Find(p.ImagePath(r.Hash()))
	if err != nil {
		return iothrottle.Device{}, fmt.Errorf("find the loop device of %s: %w", r.ID, err)
	}
	if dev == nil {
		return iothrottle.Device{}, errorf(ErrPrecondition, "volume %s is attached to no loop device on this node (not staged)", r.ID)
	}
	return iothrottle.BlockDevice(dev.Path)
}

func (imageBackend) checkIODevice(*Pool) error { return nil }

// MutableParams: an image volume's per-pod I/O limits.
func (imageBackend) MutableParams() []string { return ioParams }

// CheckMutable validates an I/O limit.
func (imageBackend) CheckMutable(p *Pool, key, value string) error {
	return checkIOParam(p, key, value)
}

// Modify: the node applies I/O limits to the pods (nodeio.go).
func (imageBackend) Modify(context.Context, *Pool, *Record, string) error { return nil }
