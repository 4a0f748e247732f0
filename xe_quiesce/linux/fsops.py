"""The kernel calls of freezing, behind one small class so the engine can be driven by tests.

Each mount point is reached through an fd opened O_RDONLY|O_DIRECTORY and held for the
whole session: the thaw then acts on exactly the superblock that was frozen, even if a
path lookup would now land somewhere else.
"""
import ctypes
import errno
import fcntl
import os

FIFREEZE = 0xC0045877
FITHAW = 0xC0045878

_libc = ctypes.CDLL(None, use_errno=True)


class FsOps(object):
    """Real FIFREEZE/FITHAW/syncfs on open directory fds."""

    def open(self, mount_point):
        return os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def mount_id(self, fd):
        """The id of the mount the fd was opened through (mountinfo's first field).

        It proves the fd reached the planned mount and not the directory under it after
        an unmount: st_dev cannot, since btrfs reports per-subvolume devices there.
        None on kernels before 3.15, which lack the field. Read with os calls, not a file
        object: three system calls instead of seven, once per planned mount per session.
        """
        info = os.open("/proc/self/fdinfo/{}".format(fd), os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(info, 4096)
        finally:
            os.close(info)
        for line in data.split(b"\n"):
            if line.startswith(b"mnt_id:"):
                return int(line.split()[1])
        return None

    def device(self, fd):
        """(major, minor) of the filesystem the fd is on, per stat."""
        st_dev = os.fstat(fd).st_dev
        return os.major(st_dev), os.minor(st_dev)

    def syncfs(self, fd):
        if _libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    def freeze(self, fd):
        fcntl.ioctl(fd, FIFREEZE, 0)

    def thaw(self, fd):
        """Thaw; True if it was frozen, False if it was not (the kernel's EINVAL)."""
        try:
            fcntl.ioctl(fd, FITHAW, 0)
        except OSError as error:
            if error.errno == errno.EINVAL:
                return False
            raise
        return True

    def close(self, fd):
        os.close(fd)
