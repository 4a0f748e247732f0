"""The bench's own world: a private tmpfs holding loop images, and the checks that keep
every freeze inside it.

Images live on a tmpfs the bench mounts itself, not on the machine's disk: the run then
does not depend on (or wear) whatever else uses the disk, and a flush of unsynced data
costs memory copies and the filesystems' own work rather than the host disk's speed.
The FIFREEZE grace-period cost the comparisons are about is the same either way.
"""
import os
import subprocess
import tempfile
import time

from testbed.loopfs import LoopFs

# ext4 must hold the 64 MiB of unsynced data; xfsprogs refuses less than 300 MiB.
SIZE_MB = {"ext4": 128, "xfs": 300}
SCALE_SIZE_MB = 16
UMOUNT_TRIES = 100
DIRTY_CHUNK = b"\xa5" * (1 << 20)


def fstype_for(index):
    """ext4/xfs alternating, as the issue's anchors were measured."""
    return "ext4" if index % 2 == 0 else "xfs"


class Workspace(object):
    """A tmpfs at a fresh directory under /tmp; unmounted (with all under it) at close."""

    def __init__(self, size="8g"):
        self.path = tempfile.mkdtemp(prefix="xeq-bench-", dir="/tmp")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size={},mode=0700".format(size),
                        "xeq-bench", self.path], check=True)
        self.filesystems = []

    def sub(self, *parts):
        path = os.path.join(self.path, *parts)
        return path

    def make_fs(self, name, fstype, size_mb=None):
        fs = LoopFs(self.path, fstype, name=name, size_mb=size_mb or SIZE_MB[fstype])
        self.filesystems.append(fs)
        return fs.create()

    def make_set(self, prefix, count, size_mb=None, fstype=None):
        return [self.make_fs("{}{:03d}".format(prefix, i), fstype or fstype_for(i), size_mb)
                for i in range(count)]

    def destroy(self, filesystems):
        for fs in filesystems:
            fs.destroy()
            self.filesystems.remove(fs)

    def close(self):
        try:
            self.destroy(list(reversed(self.filesystems)))
        finally:
            self._umount()
            os.rmdir(self.path)

    def _umount(self):
        """A daemon or guard that has just exited may hold its log here a moment longer."""
        for _ in range(UMOUNT_TRIES):
            if subprocess.run(["umount", self.path], stderr=subprocess.PIPE).returncode == 0:
                return
            time.sleep(0.1)
        holders = subprocess.run(["fuser", "-vm", self.path], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, universal_newlines=True).stdout
        raise RuntimeError("cannot unmount {}; held by:\n{}".format(self.path, holders))


def _mounts():
    """mount point -> (major, minor) of its device, from our mountinfo."""
    table = {}
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            major, minor = fields[2].split(":")
            point = fields[4].encode().decode("unicode_escape")
            table[point] = (int(major), int(minor))
    return table


def assert_ours(filesystems):
    """Refuse to go on unless every mount point is one of the bench's loop devices.

    Called before anything is frozen: a path that resolved to the root filesystem (a
    failed mount, a typo) must never reach FIFREEZE.
    """
    table = _mounts()
    for fs in filesystems:
        rdev = os.stat(fs.device).st_rdev
        if not fs.mount_point.startswith(_workspace_of(fs) + os.sep):
            raise RuntimeError("{} is outside the bench's workspace".format(fs.mount_point))
        if table.get(fs.mount_point) != (os.major(rdev), os.minor(rdev)):
            raise RuntimeError("{} is not mounted from the bench's {}".format(
                fs.mount_point, fs.device))
    return [fs.mount_point for fs in filesystems]


def _workspace_of(fs):
    return os.path.dirname(fs.image)


def dirty(filesystems, mib):
    """Leave `mib` MiB of unsynced data on each filesystem (overwritten in place)."""
    for fs in filesystems:
        fd = os.open(fs.path("dirty.bin"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for _ in range(mib):
                os.write(fd, DIRTY_CHUNK)
        finally:
            os.close(fd)
