"""Which filesystems a snapshot of this guest's disks needs frozen, and why the others not.

The default set is exactly the filesystems whose block devices all lie on Xen VBDs: the
host snapshots VBDs, so nothing else is part of the snapshot, and on a machine with no
VBD the set is empty. That rule is what makes the agent harmless outside a domU.
`[freeze] include`/`exclude` refine the set; `[freeze] mounts` replaces it.
"""
import collections
import fnmatch
import os

from ..errors import ConfigError
from ..linux.blockdev import BlockTopology
from ..linux.mountinfo import devno_of, is_read_only, read_mountinfo

Filesystem = collections.namedtuple(
    "Filesystem",
    "devno mount_point mount_points fstype source devices disks vbds stack entries",
)
Skipped = collections.namedtuple("Skipped", "mount_point fstype reason")

# Filesystems with no disk behind them: freezing them is meaningless (EOPNOTSUPP).
PSEUDO_FSTYPES = frozenset("""
    autofs binfmt_misc bpf cgroup cgroup2 configfs debugfs devpts devtmpfs efivarfs
    fusectl hugetlbfs mqueue nsfs proc pstore ramfs rootfs rpc_pipefs securityfs
    selinuxfs sysfs tmpfs tracefs
""".split())
NETWORK_FSTYPES = frozenset("""
    9p afs ceph cifs glusterfs gpfs lustre ncpfs nfs nfs4 smb smb3 smbfs sshfs
""".split())
STACKED_FSTYPES = frozenset("aufs overlay squashfs unionfs".split())


class Discovery(object):
    """What was found: `filesystems` to freeze and `skipped` mounts with their reason."""

    def __init__(self, filesystems, skipped, mounts):
        self.filesystems = filesystems
        self.skipped = skipped
        self.mounts = mounts


def _skip_reason(fstype):
    if fstype in PSEUDO_FSTYPES:
        return "pseudo filesystem ({}), nothing on disk".format(fstype)
    if fstype in NETWORK_FSTYPES or fstype.startswith("fuse.sshfs"):
        return "network filesystem ({}), not on this guest's disks".format(fstype)
    if fstype in STACKED_FSTYPES or fstype.startswith("fuse"):
        return ("stacked or userspace filesystem ({}); its backing filesystem is frozen "
                "instead".format(fstype))
    return None


def _by_superblock(entries):
    """Group mounts by superblock, keeping mount-table order of first appearance."""
    groups = collections.OrderedDict()
    for entry in entries:
        groups.setdefault((entry.major, entry.minor), []).append(entry)
    return groups


def _canonical(entries):
    """The mount that shows the whole filesystem: root '/' and the shortest path."""
    whole = [entry for entry in entries if entry.root == "/"] or entries
    return min(whole, key=lambda entry: (len(entry.mount_point), entry.mount_point))


def _devices(topology, entry):
    """The top block devices of a superblock; btrfs reports an anonymous 0:N device."""
    if entry.fstype == "btrfs":
        device = topology.by_source(entry.source)
        if device is None and entry.major:
            device = topology.by_devno(entry.major, entry.minor)
        if device is None:
            return []
        return topology.btrfs_members(device) or [device]
    if entry.major == 0:
        return []
    device = topology.by_devno(entry.major, entry.minor)
    return [device] if device else []


def _table_reason(entries, listed):
    """Why a superblock is set aside on its mount entries alone (no sysfs), or None.

    With explicit mounts the others' block stacks need no walk (a host with a hundred
    loop devices makes that walk the slowest part of starting a session)."""
    reason = _skip_reason(_canonical(entries).fstype)
    if reason is None and all(is_read_only(entry) for entry in entries):
        reason = "read-only"
    if reason is None and listed and not listed.intersection(
            entry.mount_point for entry in entries):
        reason = "not listed in [freeze] mounts"
    return reason


def _listed(freeze_cfg):
    return {os.path.normpath(point) for point in freeze_cfg.mounts}


def plan_inputs(freeze_cfg, mounts):
    """The mount entries a plan of this configuration depends on: every entry of each
    superblock the mount table alone does not set aside. While they are equal (and a
    mounted filesystem's block stack cannot change), so are the plan's filesystems and
    order, whatever else was mounted or unmounted."""
    listed = _listed(freeze_cfg)
    return tuple(entry for entries in _by_superblock(mounts).values()
                 if _table_reason(entries, listed) is None for entry in entries)


def discover(freeze_cfg, root="/", topology=None):
    """Classify every mounted superblock under `root` (a captured tree in tests).

    `topology`: the block stack the plan orders by too (session.make_plan), so sysfs is
    walked once per plan; by default one of its own under `root`."""
    topology = topology or BlockTopology(root=root)
    mounts = read_mountinfo(root)
    candidates, skipped = [], []
    listed = _listed(freeze_cfg)
    for entries in _by_superblock(mounts).values():
        main = _canonical(entries)
        reason = _table_reason(entries, listed)
        if reason:
            skipped.append(Skipped(main.mount_point, main.fstype, reason))
            continue
        devices = _devices(topology, main)
        disks = []
        for device in devices:
            for disk in topology.disks(device):
                if disk not in disks:
                    disks.append(disk)
        vbds = [topology.vbd_devid(disk) for disk in disks]
        fs = Filesystem(
            devno=devno_of(main.major, main.minor),
            mount_point=main.mount_point,
            mount_points=tuple(entry.mount_point for entry in entries),
            fstype=main.fstype,
            source=main.source,
            devices=tuple(devices),
            disks=tuple(disk.name for disk in disks),
            vbds=tuple(vbd for vbd in vbds if vbd is not None),
            stack="; ".join(topology.describe(device) for device in devices) or "no block device",
            entries=tuple(entries),
        )
        if not disks:
            no_vbd = "no block device behind it"
        elif None in vbds:
            outside = [disk.name for disk, vbd in zip(disks, vbds) if vbd is None]
            no_vbd = "not (entirely) on Xen VBDs: {}".format(", ".join(outside))
        else:
            no_vbd = None
        candidates.append((fs, no_vbd))
    if freeze_cfg.mounts:
        chosen = _explicit(freeze_cfg.mounts, candidates, skipped)
    else:
        chosen = _by_rule(freeze_cfg, candidates, skipped)
    return Discovery(chosen, skipped, mounts)


def _matches(fs, patterns):
    return any(fnmatch.fnmatchcase(point, pattern)
               for point in fs.mount_points for pattern in patterns)


def _by_rule(freeze_cfg, candidates, skipped):
    chosen = []
    for fs, no_vbd in candidates:
        if _matches(fs, freeze_cfg.exclude):
            skipped.append(Skipped(fs.mount_point, fs.fstype, "excluded by [freeze] exclude"))
        elif no_vbd is None or _matches(fs, freeze_cfg.include):
            chosen.append(fs)
        else:
            skipped.append(Skipped(fs.mount_point, fs.fstype, no_vbd))
    return chosen


def _explicit(mount_points, candidates, skipped):
    """`[freeze] mounts`: exactly these (discover() already set the others aside); a
    listed path that is not a mount is an error."""
    wanted = [os.path.normpath(point) for point in mount_points]
    chosen = []
    for point in wanted:
        matching = [fs for fs, _ in candidates if point in fs.mount_points]
        if matching:
            if matching[0] not in chosen:
                chosen.append(matching[0])
            continue
        refused = [skip for skip in skipped if skip.mount_point == point]
        if not refused:
            raise ConfigError("[freeze] mounts: {} is not a mount point".format(point))
    return chosen
