package testutil

import (
	"testing"

	"golang.org/x/sys/unix"
)

// FIFREEZE and FITHAW (linux/fs.h).
const (
	fiFreeze = 0xc0045877
	fiThaw   = 0xc0045878
)

// FreezeFS freezes the filesystem mounted at mnt (FIFREEZE), so writes to it block
// (a background copy into it stays in progress); the returned func thaws it, and
// runs at cleanup too, so a failing test never leaves the filesystem frozen.
func FreezeFS(t testing.TB, mnt string) (thaw func()) {
	t.Helper()
	fd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fiFreeze, 0); e != 0 {
		unix.Close(fd)
		t.Fatalf("FIFREEZE %s: %v", mnt, e)
	}
	frozen := true
	thaw = func() {
		if frozen {
			frozen = false
			if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fiThaw, 0); e != 0 {
				t.Errorf("FITHAW %s: %v", mnt, e)
			}
			unix.Close(fd)
		}
	}
	t.Cleanup(thaw)
	return thaw
}

// ThawFS thaws the filesystem mounted at path if it is frozen, ignoring errors: a
// test's last resort against a freeze the code under test left behind.
func ThawFS(path string) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	_, _, _ = unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fiThaw, 0)
	unix.Close(fd)
}
