package safefs

import (
	"strconv"

	"golang.org/x/sys/unix"
)

// ProcPath names fd's magic link in /proc: opening or changing it reaches exactly
// the inode fd refers to (an O_PATH fd included), whatever became of its name.
func ProcPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// OpenRegular opens the regular file name beneath dirfd for reading, confined
// (OpenConfined), without ever opening anything else: it takes an O_PATH fd first,
// checks its type, then reopens that very inode through ProcPath. A FIFO or device
// node swapped in between is never opened (opening one can block or act); anything
// but a regular file is EINVAL.
func OpenRegular(dirfd int, name string) (int, error) {
	pfd, err := OpenConfined(dirfd, name, unix.O_PATH)
	if err != nil {
		return -1, err
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return -1, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return -1, unix.EINVAL
	}
	return unix.Open(ProcPath(pfd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
}
