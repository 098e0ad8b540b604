package iothrottle

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNoDevice is wrapped when a filesystem lies on no block device that can be
// throttled (tmpfs, overlay, a network filesystem, FUSE).
var ErrNoDevice = errors.New("no block device to throttle")

// sysDevBlock and mountInfo are where the kernel says which block devices exist
// and what is mounted from them.
const (
	sysDevBlock = "/sys/dev/block"
	mountInfo   = "/proc/self/mountinfo"
)

// DeviceOf is the block device the filesystem holding path lies on, as the
// throttle takes it: the whole disk of a partition. A filesystem whose st_dev is
// no block device (btrfs gives anonymous numbers) is looked up in the mount table:
// the device it was mounted from, when that is a block device. Else ErrNoDevice.
func DeviceOf(path string) (Device, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return Device{}, fmt.Errorf("stat %s: %w", path, err)
	}
	dev := Device{unix.Major(st.Dev), unix.Minor(st.Dev)}
	if _, err := os.Stat(filepath.Join(sysDevBlock, dev.String())); err == nil {
		return wholeDisk(dev)
	}
	source, fsType, err := mountedFrom(dev)
	if err != nil {
		return Device{}, err
	}
	if strings.HasPrefix(source, "/") {
		if d, err := BlockDevice(source); err == nil {
			return d, nil
		}
	}
	return Device{}, fmt.Errorf("%s is on a %s filesystem mounted from %q: %w", path, fsType, source, ErrNoDevice)
}

// BlockDevice is the device node at path (a loop device, a disk), as the throttle
// takes it: the whole disk of a partition.
func BlockDevice(path string) (Device, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return Device{}, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return Device{}, fmt.Errorf("%s is not a block device: %w", path, ErrNoDevice)
	}
	return wholeDisk(Device{unix.Major(st.Rdev), unix.Minor(st.Rdev)})
}

// wholeDisk is the disk a partition belongs to (its parent in sysfs), or dev.
func wholeDisk(dev Device) (Device, error) {
	dir, err := filepath.EvalSymlinks(filepath.Join(sysDevBlock, dev.String()))
	if err != nil {
		return Device{}, fmt.Errorf("block device %s: %w", dev, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "partition")); err != nil {
		return dev, nil
	}
	data, err := os.ReadFile(filepath.Join(filepath.Dir(dir), "dev"))
	if err != nil {
		return Device{}, fmt.Errorf("disk of partition %s: %w", dev, err)
	}
	return parseDevice(strings.TrimSpace(string(data)))
}

func parseDevice(s string) (Device, error) {
	maj, mnr, ok := strings.Cut(s, ":")
	a, err1 := strconv.ParseUint(maj, 10, 32)
	b, err2 := strconv.ParseUint(mnr, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return Device{}, fmt.Errorf("device number %q: not major:minor", s)
	}
	return Device{uint32(a), uint32(b)}, nil
}

// mountedFrom finds the source and type of a mount of device number dev.
func mountedFrom(dev Device) (source, fsType string, err error) {
	f, err := os.Open(mountInfo)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[2] != dev.String() {
			continue
		}
		for i := 6; i+2 < len(fields); i++ {
			if fields[i] == "-" {
				return unescape(fields[i+2]), fields[i+1], nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", "", fmt.Errorf("read %s: %w", mountInfo, err)
	}
	return "", "", fmt.Errorf("device %s is in no mount of %s: %w", dev, mountInfo, ErrNoDevice)
}

// unescape undoes the octal escapes of mountinfo (\040 for a space...).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
