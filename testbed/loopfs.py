"""Real filesystems on loop devices for tests and bench: created, mounted, always torn down.

Images are sparse files in the caller's temporary folder on the machine's root
filesystem, which no test ever freezes.
"""
import errno
import fcntl
import os
import subprocess

from xe_quiesce.linux.fsops import FIFREEZE, FITHAW

MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}
# xfsprogs refuses filesystems under 300 MiB.
SIZE_MB = {"ext4": 64, "xfs": 300, "btrfs": 128}


def run(*argv, **kwargs):
    return subprocess.run(list(argv), check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, **kwargs)


class LoopFs(object):
    def __init__(self, workdir, fstype, name=None, mount_point=None, size_mb=None):
        self.fstype = fstype
        name = name or fstype
        self.image = os.path.join(workdir, name + ".img")
        self.mount_point = mount_point or os.path.join(workdir, name)
        self.size_mb = size_mb or SIZE_MB[fstype]
        self.device = None
        self.mounted = False

    def create(self):
        with open(self.image, "wb") as handle:
            handle.truncate(self.size_mb << 20)
        self.device = run("losetup", "--find", "--show", self.image).stdout.strip()
        run(*(MKFS[self.fstype] + [self.device]))
        self.mount()
        return self

    def mount(self):
        os.makedirs(self.mount_point, exist_ok=True)
        run("mount", "-t", self.fstype, self.device, self.mount_point)
        self.mounted = True

    def umount(self):
        if self.mounted:
            subprocess.run(["fsfreeze", "-u", self.mount_point], stderr=subprocess.DEVNULL)
            run("umount", self.mount_point)
            self.mounted = False

    def destroy(self):
        try:
            self.umount()
        finally:
            if self.device:
                subprocess.run(["losetup", "-d", self.device])
                self.device = None

    def path(self, *parts):
        return os.path.join(self.mount_point, *parts)


def is_frozen(mount_point):
    """Probe: a second FIFREEZE answers EBUSY on a frozen filesystem (then undo ours)."""
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
    except OSError as error:
        if error.errno == errno.EBUSY:
            return True
        raise
    else:
        try:
            fcntl.ioctl(fd, FITHAW, 0)
        except OSError as error:
            # EINVAL: already thawed, by a thaw aimed at the session's freeze that came
            # just after it ended (its deadline timer and the guard both thaw). Either
            # way it was not frozen when probed.
            if error.errno != errno.EINVAL:
                raise
        return False
    finally:
        os.close(fd)
