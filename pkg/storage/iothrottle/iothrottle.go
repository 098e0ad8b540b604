// Package iothrottle caps the I/O of a Kubernetes pod to one block device with the
// kernel's block throttle: io.max on cgroup v2, the blkio.throttle.*_device files on
// cgroup v1.
//
// On cgroup v2 a limit set on the pod's cgroup caps the whole subtree (its
// containers' cgroups), so the pod's cgroup is the one written. On cgroup v1 it
// does not: blk-throttle is hierarchical only on the default (v2) hierarchy; a v1
// limit holds for the tasks of that very cgroup and no child's (verified on Linux
// 6.18: 3 MiB read in 2 ms from a child of a cgroup limited to 1 MiB/s, in 3 s from
// the cgroup itself). Kubelet's containers run in child cgroups of the pod's, so on
// v1 the limits are written into the pod's cgroup and every cgroup below it; a
// container started later is reached by the next Set.
package iothrottle

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/berth-csi/berth/pkg/storage/podcgroup"
)

// Limits caps I/O to one device; 0 is no limit.
type Limits struct {
	ReadBPS, WriteBPS   uint64 // bytes per second
	ReadIOPS, WriteIOPS uint64 // operations per second
}

// Zero reports whether l limits nothing.
func (l Limits) Zero() bool { return l == Limits{} }

// Strictest is the stricter of l and o in each field (0 is no limit).
func (l Limits) Strictest(o Limits) Limits {
	min0 := func(a, b uint64) uint64 {
		switch {
		case a == 0:
			return b
		case b == 0:
			return a
		}
		return min(a, b)
	}
	return Limits{ReadBPS: min0(l.ReadBPS, o.ReadBPS), WriteBPS: min0(l.WriteBPS, o.WriteBPS),
		ReadIOPS: min0(l.ReadIOPS, o.ReadIOPS), WriteIOPS: min0(l.WriteIOPS, o.WriteIOPS)}
}

// Device is a block device's number. The kernel throttles whole devices: a
// partition's number is refused (EINVAL), pass its disk's.
type Device struct{ Major, Minor uint32 }

func (d Device) String() string { return fmt.Sprintf("%d:%d", d.Major, d.Minor) }

// Throttler sets pods' I/O limits under one cgroup mount root.
type Throttler struct{ root string }

// New returns a throttler for the cgroup filesystems mounted under root
// (podcgroup.DefaultRoot on a host; in a container, where the host's are mounted).
func New(root string) *Throttler { return &Throttler{root: root} }

func (t *Throttler) hierarchy() (string, bool, error) {
	return podcgroup.Hierarchy(t.root, "blkio")
}

// Find returns the cgroup of the pod with this UID in the hierarchy that throttles
// I/O; an error wrapping podcgroup.ErrNoPod when there is none.
func (t *Throttler) Find(uid string) (string, error) {
	top, _, err := t.hierarchy()
	if err != nil {
		return "", err
	}
	return podcgroup.Find(top, uid)
}

// Set makes l the limits of the pod's cgroup dir (as Find returned it) for dev,
// replacing what was set for dev before; a zero field lifts that limit. Setting the
// same limits again changes nothing. Cgroups that vanish meanwhile (a container
// that ended) are skipped; a pod's cgroup that is gone is os.ErrNotExist.
func (t *Throttler) Set(dir string, dev Device, l Limits) error {
	top, v2, err := t.hierarchy()
	if err != nil {
		return err
	}
	if err := podcgroup.Below(top, dir); err != nil {
		return err
	}
	if _, err := os.Stat(dir); err != nil {
		return err
	}
	if v2 {
		return setV2(dir, dev, l)
	}
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path != dir && errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if err := setV1(path, dev, l); err != nil && (path == dir || !gone(err)) {
			return err
		}
		return nil
	})
}

// gone reports an error of a write into a cgroup removed meanwhile.
func gone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENODEV)
}

// setV1 writes the four v1 throttle files of one cgroup: "major:minor value", where
// 0 removes the device's entry.
func setV1(dir string, dev Device, l Limits) error {
	for _, f := range []struct {
		name string
		v    uint64
	}{
		{"blkio.throttle.read_bps_device", l.ReadBPS}, {"blkio.throttle.write_bps_device", l.WriteBPS},
		{"blkio.throttle.read_iops_device", l.ReadIOPS}, {"blkio.throttle.write_iops_device", l.WriteIOPS},
	} {
		if err := write(filepath.Join(dir, f.name), fmt.Sprintf("%s %d", dev, f.v)); err != nil {
			return err
		}
	}
	return nil
}

// setV2 writes the device's line of io.max; "max" lifts a limit.
func setV2(dir string, dev Device, l Limits) error {
	v := func(n uint64) string {
		if n == 0 {
			return "max"
		}
		return strconv.FormatUint(n, 10)
	}
	return write(filepath.Join(dir, "io.max"), fmt.Sprintf("%s rbps=%s wbps=%s riops=%s wiops=%s",
		dev, v(l.ReadBPS), v(l.WriteBPS), v(l.ReadIOPS), v(l.WriteIOPS)))
}

// Get reads the limits the cgroup dir holds for dev (for tests and diagnostics).
func (t *Throttler) Get(dir string, dev Device) (Limits, error) {
	_, v2, err := t.hierarchy()
	if err != nil {
		return Limits{}, err
	}
	var l Limits
	if v2 {
		data, err := os.ReadFile(filepath.Join(dir, "io.max"))
		if err != nil {
			return l, err
		}
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || f[0] != dev.String() {
				continue
			}
			for _, kv := range f[1:] {
				k, val, _ := strings.Cut(kv, "=")
				n, _ := strconv.ParseUint(val, 10, 64) // "max": 0
				switch k {
				case "rbps":
					l.ReadBPS = n
				case "wbps":
					l.WriteBPS = n
				case "riops":
					l.ReadIOPS = n
				case "wiops":
					l.WriteIOPS = n
				}
			}
		}
		return l, nil
	}
	for _, f := range []struct {
		name string
		v    *uint64
	}{
		{"blkio.throttle.read_bps_device", &l.ReadBPS}, {"blkio.throttle.write_bps_device", &l.WriteBPS},
		{"blkio.throttle.read_iops_device", &l.ReadIOPS}, {"blkio.throttle.write_iops_device", &l.WriteIOPS},
	} {
		data, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			return l, err
		}
		for _, line := range strings.Split(string(data), "\n") {
			if d, val, ok := strings.Cut(strings.TrimSpace(line), " "); ok && d == dev.String() {
				*f.v, _ = strconv.ParseUint(val, 10, 64)
			}
		}
	}
	return l, nil
}

func write(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", value, path, err)
	}
	return nil
}
