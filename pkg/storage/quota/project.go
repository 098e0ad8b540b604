package quota

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// SetProject gives directory dir the project ID id and the inherit flag
// (FS_XFLAG_PROJINHERIT), so that every file and directory created beneath it
// from now on is charged to id, and each new subdirectory inherits the flag
// too. Entries that already exist below dir keep their project ID; the
// directory itself is charged to id at once (one inode and its blocks). Moving
// an entry into dir from another project fails with EXDEV, so tools fall back
// to copying. dir must be a directory, not a symlink to one (ENOTDIR). id 0 is
// the project of every file that has none.
func SetProject(dir string, id uint32) error {
	fd, err := openDir(dir)
	if err != nil {
		return fmt.Errorf("set project %d on %s: %w", id, dir, err)
	}
	defer unix.Close(fd)
	var fa fsxattr
	if err := ioctlFsxattr(fd, fsIocFSGetXattr, &fa); err != nil {
		return fmt.Errorf("set project %d on %s: FS_IOC_FSGETXATTR: %w", id, dir, err)
	}
	if fa.ProjID == id && fa.XFlags&fsXFlagProjInherit != 0 {
		return nil
	}
	fa.ProjID = id
	fa.XFlags |= fsXFlagProjInherit
	if err := ioctlFsxattr(fd, fsIocFSSetXattr, &fa); err != nil {
		return fmt.Errorf("set project %d on %s: FS_IOC_FSSETXATTR: %w", id, dir, err)
	}
	return nil
}

// Project returns the project ID of directory dir, which must not be a
// symlink (ENOTDIR).
func Project(dir string) (uint32, error) {
	fd, err := openDir(dir)
	if err != nil {
		return 0, fmt.Errorf("get project of %s: %w", dir, err)
	}
	defer unix.Close(fd)
	var fa fsxattr
	if err := ioctlFsxattr(fd, fsIocFSGetXattr, &fa); err != nil {
		return 0, fmt.Errorf("get project of %s: FS_IOC_FSGETXATTR: %w", dir, err)
	}
	return fa.ProjID, nil
}

// openDir opens dir for the fsxattr ioctls. It refuses anything but a
// directory with ENOTDIR, a symlink to a directory included (O_NOFOLLOW with
// O_DIRECTORY gives ENOTDIR there, not ELOOP).
func openDir(dir string) (int, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open: %w", err)
	}
	return fd, nil
}

// FileProject reads the project ID of the file or directory open at fd (a
// real fd: the ioctl refuses an O_PATH one with EBADF) and whether it carries
// the inherit flag.
func FileProject(fd int) (id uint32, inherit bool, err error) {
	var fa fsxattr
	if err := ioctlFsxattr(fd, fsIocFSGetXattr, &fa); err != nil {
		return 0, false, fmt.Errorf("FS_IOC_FSGETXATTR: %w", err)
	}
	return fa.ProjID, fa.XFlags&fsXFlagProjInherit != 0, nil
}

// SetFileProject charges the file or directory open at fd to project id, with
// the inherit flag set or cleared as inherit says (only a directory should have
// it), keeping every other attribute. The kernel moves the inode's usage to id
// (FS_IOC_FSSETXATTR transfers the quota charge), past id's limit for a caller
// with CAP_SYS_RESOURCE; writes are refused after that.
func SetFileProject(fd int, id uint32, inherit bool) error {
	var fa fsxattr
	if err := ioctlFsxattr(fd, fsIocFSGetXattr, &fa); err != nil {
		return fmt.Errorf("FS_IOC_FSGETXATTR: %w", err)
	}
	fa.ProjID = id
	fa.XFlags &^= fsXFlagProjInherit
	if inherit {
		fa.XFlags |= fsXFlagProjInherit
	}
	if err := ioctlFsxattr(fd, fsIocFSSetXattr, &fa); err != nil {
		return fmt.Errorf("FS_IOC_FSSETXATTR: %w", err)
	}
	return nil
}
