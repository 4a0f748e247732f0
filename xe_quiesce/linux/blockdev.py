"""The Linux block-device stack, read from sysfs.

Discovery must know which Xen VBDs lie under each mounted filesystem, through
partitions, device-mapper (LVM, LUKS), md RAID and loop devices, because only a
filesystem wholly on VBDs belongs in the default freeze set.  Everything is read
through a `root` directory so that sysfs trees captured on real guests
(tests/fixtures/capture_sysfs.sh) can be replayed as test fixtures.  Symbolic links
are resolved by hand, relative to `root`, so that no read ever leaves it: a captured
tree with an absolute or over-long `..` link cannot point us at the live host.

Nothing here raises on a strange tree (missing files, dangling links, loops in
`slaves/`, garbage in `nodename`): the device or edge is left out and a readable
line is appended to `BlockTopology.problems`, since a discovery that crashes on one
odd device would leave the admin with no plan at all.
"""
import collections
import errno
import os
import re

BlockDevice = collections.namedtuple("BlockDevice", "name kind label major minor lower")
BlockDevice.__doc__ = """One block device and the devices directly beneath it.

name: the kernel name ("xvda1", "dm-0", "md0", "loop3");
kind: "disk", "partition", "lvm", "crypt", "dm" (other device-mapper), "md", "loop"
      or "other" (a whole device with no driver behind it, e.g. zram);
label: the device-mapper name ("vg0-root"), the md array name for md_<name>
       devices, else None;
lower: tuple of BlockDevice (partition -> its disk, dm/md -> slaves, leaves -> ()).
"""

_MAX_SYMLINKS = 40   # as the kernel's own ELOOP limit
_MAX_DEPTH = 32      # far deeper than any real stack; stops runaway recursion
_MAX_READ = 65536    # sysfs attributes are at most a page
_DEVNO = re.compile(r"([0-9]+):([0-9]+)\Z")
_VBD_NODENAME = re.compile(r"device/vbd/([0-9]+)\Z")
_DM_KINDS = (("LVM-", "lvm"), ("CRYPT-", "crypt"))


def _dm_name_of_lv(vg, lv):
    """LVM's device-mapper name for /dev/<vg>/<lv>: dashes doubled, joined by one."""
    return "-".join(part.replace("-", "--") for part in (vg, lv))


class BlockTopology:
    """A lazy, memoised view of the block devices under `root`.

    Each device's sysfs directory is found through /sys/dev/block/<major>:<minor>,
    which exists for every disk and partition, so one kind of lookup serves all.
    Build one instance per discovery: the memo assumes sysfs does not change.
    """

    def __init__(self, root="/"):
        self.root = os.path.abspath(root)
        self.problems = []     # readable notes on what was odd and left out
        self.unresolved = {}   # "M:m" or mount source -> why it gave None
        self._built = {}       # canonical sysfs dir -> BlockDevice or None
        self._names = None     # kernel name -> canonical sysfs dir
        self._dm_names = None  # device-mapper name -> kernel name

    # -- reading under root -------------------------------------------------

    def _resolve(self, path):
        """The canonical root-relative form of `path`, or None when it does not exist.

        Absolute link targets restart at `root` and `..` stops at `root`, exactly
        as if we were chrooted there.
        """
        pending = [p for p in path.split("/") if p]
        done = []
        links = 0
        while pending:
            part = pending.pop(0)
            if part == ".":
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            try:
                target = os.readlink(os.path.join(self.root, *(done + [part])))
            except OSError as e:
                if e.errno != errno.EINVAL:     # EINVAL: exists, not a link
                    return None
                done.append(part)
                continue
            links += 1
            if links > _MAX_SYMLINKS:
                self._note(f"{path}: too many levels of symbolic links")
                return None
            if target.startswith("/"):
                done = []
            pending = [p for p in target.split("/") if p] + pending
        return "/" + "/".join(done)

    def _read(self, path):
        """The text of a sysfs attribute without its trailing newline, or None."""
        real = self._resolve(path)
        if real is None:
            return None
        try:
            with open(os.path.join(self.root, real.lstrip("/")), "rb") as f:
                data = f.read(_MAX_READ)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                self._note(f"{path}: {os.strerror(e.errno)}")
            return None
        return data.decode("utf-8", "surrogateescape").rstrip("\n")

    def _listdir(self, path):
        """The sorted entry names of directory `path`; [] when it is missing."""
        real = self._resolve(path)
        try:
            return sorted(os.listdir(os.path.join(self.root, real.lstrip("/")))) if real else []
        except OSError:
            return []

    def _links(self, path):
        """The resolved targets of the links in directory `path`, sorted by name."""
        targets = []
        for name in self._listdir(path):
            target = self._resolve(f"{path}/{name}")
            if target is None:
                self._note(f"{path}/{name}: dangling link")
            else:
                targets.append(target)
        return targets

    def _exists(self, path):
        return self._resolve(path) is not None

    def _note(self, text):
        if text not in self.problems:
            self.problems.append(text)

    # -- building devices ---------------------------------------------------

    def _device(self, sysdir, stack=()):
        """The BlockDevice whose canonical sysfs directory is `sysdir`, or None."""
        if sysdir in self._built:
            return self._built[sysdir]
        if sysdir in stack:
            chain = " -> ".join(stack + (sysdir,))
            self._note(f"{sysdir}: loop in the device stack ({chain}); edge left out")
            return None
        if len(stack) >= _MAX_DEPTH:
            self._note(f"{sysdir}: device stack deeper than {_MAX_DEPTH}; left out")
            return None
        devno = _DEVNO.match(self._read(sysdir + "/dev") or "")
        if devno is None:
            self._note(f"{sysdir}: no readable major:minor in dev; left out")
            self._built[sysdir] = None
            return None
        name = os.path.basename(sysdir)
        kind, label = self._kind(sysdir, name)
        stack = stack + (sysdir,)
        if kind == "partition":
            below = [os.path.dirname(sysdir)]
        else:
            below = self._links(sysdir + "/slaves")
        lower = tuple(d for d in (self._device(b, stack) for b in below) if d is not None)
        device = BlockDevice(name, kind, label, int(devno.group(1)), int(devno.group(2)), lower)
        self._built[sysdir] = device
        return device

    def _kind(self, sysdir, name):
        """(kind, label) of the device at `sysdir`, from the attributes it has."""
        if self._exists(sysdir + "/partition"):
            return "partition", None
        if self._exists(sysdir + "/dm"):
            uuid = self._read(sysdir + "/dm/uuid") or ""
            kind = next((k for prefix, k in _DM_KINDS if uuid.startswith(prefix)), "dm")
            return kind, self._read(sysdir + "/dm/name") or None
        if self._exists(sysdir + "/md"):
            return "md", name[3:] if name.startswith("md_") else None
        if name.startswith("loop"):
            return "loop", None
        if self._exists(sysdir + "/device"):
            return "disk", None
        return "other", None

    def _sysdir(self, device):
        return self._resolve(f"/sys/dev/block/{device.major}:{device.minor}")

    def _index(self):
        """Kernel names and dm names of all block devices, for resolving mount sources."""
        if self._names is None:
            self._names, self._dm_names = {}, {}
            for sysdir in self._links("/sys/dev/block"):
                name = os.path.basename(sysdir)
                self._names[name] = sysdir
                dm_name = self._read(sysdir + "/dm/name")
                if dm_name:
                    self._dm_names[dm_name] = name
        return self._names

    # -- public interface ---------------------------------------------------

    def by_devno(self, major, minor):
        """The device with this major:minor (as in mountinfo), or None."""
        key = f"{major}:{minor}"
        sysdir = self._resolve("/sys/dev/block/" + key)
        device = self._device(sysdir) if sysdir else None
        if device is None:
            self.unresolved[key] = (f"no block device {key} in sysfs" if sysdir is None
                                    else f"unusable sysfs entry for {key}")
        return device

    def by_source(self, source):
        """The device a mount source names, resolved through sysfs names only.

        Understood: /dev/<kernel name>, /dev/mapper/<dm name>, /dev/<vg>/<lv>,
        /dev/md/<N> and /dev/md/<name> (for md_<name> arrays).  Links the live
        /dev holds (by-uuid, md names kept only by udev) cannot be resolved from
        sysfs; they give None with the reason in `unresolved`.
        """
        names = self._index()
        parts = source.split("/")[2:] if source.startswith("/dev/") else []
        if len(parts) == 1:
            candidates = [parts[0]]
        elif len(parts) == 2 and parts[0] == "mapper":
            candidates = [self._dm_names.get(parts[1])]
        elif len(parts) == 2 and parts[0] == "md":
            candidates = ["md" + parts[1], "md_" + parts[1]]
        elif len(parts) == 2:
            candidates = [self._dm_names.get(_dm_name_of_lv(*parts)), "!".join(parts)]
        else:
            candidates = []
        for name in candidates:
            if name in names:
                device = self._device(names[name])
                if device is not None:
                    return device
        self.unresolved[source] = f"{source} names no block device known to sysfs"
        return None

    def btrfs_members(self, device):
        """All devices of the btrfs filesystem `device` belongs to; [] if none.

        btrfs mounts show an anonymous 0:NN device in mountinfo and one member as
        the source, so the other members come from /sys/fs/btrfs/<fsid>/devices/.
        """
        sysdir = self._sysdir(device)
        for fsid in self._listdir("/sys/fs/btrfs") if sysdir else ():
            members = self._links(f"/sys/fs/btrfs/{fsid}/devices")
            if sysdir in members:
                return [d for d in (self._device(m) for m in members) if d is not None]
        return []

    def disks(self, device):
        """The devices at the bottom of the stack (disks, loops, others), deduplicated."""
        found = collections.OrderedDict()
        todo = [device]
        while todo:
            d = todo.pop(0)
            if d.lower:
                todo[:0] = d.lower
            else:
                found.setdefault((d.major, d.minor), d)
        return list(found.values())

    def vbd_devid(self, disk):
        """The Xen VBD devid of a whole disk, or None when it is no Xen VBD.

        blkfront's xenbus device carries `nodename` = device/vbd/<devid>; it is read
        through the disk's /sys/dev/block entry, the same directory /sys/block/<disk>
        links to.  Partitions have no `device` link, so they give None.
        """
        sysdir = self._sysdir(disk)
        nodename = self._read(sysdir + "/device/nodename") if sysdir else None
        if nodename is None:
            return None
        match = _VBD_NODENAME.match(nodename.strip())
        if match is None:
            self._note(f"{sysdir}/device/nodename: not device/vbd/<devid>: {nodename!r}")
            return None
        return int(match.group(1))

    def loop_backing_file(self, device):
        """The file behind a loop device (as the kernel shows it), or None."""
        sysdir = self._sysdir(device)
        return (self._read(sysdir + "/loop/backing_file") or None) if sysdir else None

    def describe(self, device):
        """One readable line of the stack: "lvm vg0-root <- xvda2 <- xvda (vbd 51712)"."""
        head = self._head(device)
        if not device.lower:
            return head
        if len(device.lower) == 1:
            return f"{head} <- {self.describe(device.lower[0])}"
        return f"{head} <- [{', '.join(self.describe(d) for d in device.lower)}]"

    def _head(self, device):
        if device.kind in ("disk", "partition"):
            head = device.name
        else:
            head = f"{device.kind} {device.label or device.name}"
        sysdir = self._sysdir(device)
        if device.kind == "disk":
            devid = self.vbd_devid(device)
            detail = None if devid is None else f"vbd {devid}"
        elif device.kind == "md":
            detail = self._read(sysdir + "/md/level") if sysdir else None
        elif device.kind == "loop":
            detail = self.loop_backing_file(device)
        else:
            detail = None
        return f"{head} ({detail})" if detail else head
