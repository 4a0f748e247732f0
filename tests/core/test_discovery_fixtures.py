"""Discovery on the sysfs/proc fixture trees (tests/fixtures/sysfs/<scenario>/).

The default freeze set must be exactly the filesystems whose block devices all lie on
Xen VBDs; every other mount is skipped with a reason, and every mount is accounted for.
"""
import os
import re
import types

import pytest

from tests.fixtures import build_sysfs
from xe_quiesce.core.discovery import discover
from xe_quiesce.errors import ConfigError

FIXTURES = build_sysfs.DEFAULT_DEST

# scenario -> {devno: (mount_point, mount_points, fstype, source, disks, vbds)}
EXPECTED = {
    "plain-partition": {
        "202:2": ("/", {"/", "/var/www", "/srv/www-ro"}, "ext4", "/dev/xvda2",
                  ("xvda",), (51712,)),
        "202:1": ("/boot", {"/boot"}, "ext4", "/dev/xvda1", ("xvda",), (51712,)),
    },
    "lvm-one-vbd": {
        "253:0": ("/", {"/"}, "ext4", "/dev/mapper/vg0-root", ("xvda",), (51712,)),
        "202:1": ("/boot", {"/boot"}, "ext4", "/dev/xvda1", ("xvda",), (51712,)),
        "253:2": ("/home", {"/home"}, "xfs", "/dev/mapper/vg0-home", ("xvda",), (51712,)),
        "253:3": ("/srv/shared data", {"/srv/shared data"}, "ext4",
                  "/dev/mapper/vg0-srv--data", ("xvda",), (51712,)),
    },
    "lvm-two-vbds": {
        "202:1": ("/", {"/"}, "ext4", "/dev/xvda1", ("xvda",), (51712,)),
        "253:0": ("/srv/data", {"/srv/data"}, "xfs", "/dev/mapper/data-big",
                  ("xvdb", "xvdc"), (51728, 51744)),
        "253:1": ("/srv/small", {"/srv/small"}, "ext4", "/dev/mapper/data-small",
                  ("xvdc",), (51744,)),
    },
    "luks-on-lvm": {
        "253:0": ("/", {"/"}, "ext4", "/dev/mapper/vg0-root", ("xvda",), (51712,)),
        "202:1": ("/boot", {"/boot"}, "ext4", "/dev/xvda1", ("xvda",), (51712,)),
        "253:2": ("/srv/vault", {"/srv/vault"}, "ext4", "/dev/mapper/vault",
                  ("xvda",), (51712,)),
    },
    "md-raid1": {
        "202:1": ("/", {"/"}, "ext4", "/dev/xvda1", ("xvda",), (51712,)),
        "9:0": ("/data", {"/data"}, "ext4", "/dev/md0", ("xvdb", "xvdc"), (51728, 51744)),
    },
    "btrfs-two-disks": {
        "202:1": ("/", {"/"}, "ext4", "/dev/xvda1", ("xvda",), (51712,)),
        "0:45": ("/pool", {"/pool", "/pool/snapshots"}, "btrfs", "/dev/xvdb",
                 ("xvdb", "xvdc"), (51728, 51744)),
    },
    "lvm-vbd-and-iscsi": {
        "202:1": ("/", {"/"}, "ext4", "/dev/xvda1", ("xvda",), (51712,)),
        "253:1": ("/srv/local", {"/srv/local"}, "ext4", "/dev/mapper/data-local",
                  ("xvdb",), (51728,)),
    },
    "non-xen": {},
}

PSEUDO = {"sysfs", "proc", "devtmpfs", "devpts", "tmpfs", "securityfs", "cgroup2", "pstore",
          "bpf", "autofs", "mqueue", "hugetlbfs", "debugfs", "tracefs", "configfs", "fusectl"}


def freeze_cfg(mounts=(), include=(), exclude=()):
    return types.SimpleNamespace(mounts=list(mounts), include=list(include),
                                 exclude=list(exclude))


def run(scenario, **cfg):
    return discover(freeze_cfg(**cfg), root=os.path.join(FIXTURES, scenario))


def unescape(field):
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def mountinfo(scenario):
    """(mount point, fstype) of every line, parsed here independently of the product."""
    with open(os.path.join(FIXTURES, scenario, "proc", "self", "mountinfo")) as handle:
        lines = [line.split(" ") for line in handle.read().splitlines()]
    return [(unescape(f[4]), f[f.index("-", 6) + 1]) for f in lines]


def planned(discovery):
    return {fs.devno: (fs.mount_point, set(fs.mount_points), fs.fstype, fs.source,
                       tuple(fs.disks), tuple(fs.vbds))
            for fs in discovery.filesystems}


def skipped(discovery):
    return {skip.mount_point: skip for skip in discovery.skipped}


def test_every_scenario_is_covered():
    assert set(EXPECTED) == set(build_sysfs.SCENARIOS)


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_default_set_is_exactly_the_filesystems_on_vbds(scenario):
    discovery = run(scenario)
    assert planned(discovery) == EXPECTED[scenario]
    assert len(discovery.filesystems) == len(EXPECTED[scenario])   # one entry per superblock


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_every_other_mount_is_skipped_with_a_reason(scenario):
    discovery = run(scenario)
    frozen = {point for fs in discovery.filesystems for point in fs.mount_points}
    skips = skipped(discovery)
    assert not frozen & set(skips)
    for point, fstype in mountinfo(scenario):
        assert point in frozen or point in skips, point
        if fstype in PSEUDO:
            assert re.search("pseudo", skips[point].reason), skips[point]
    assert all(skip.reason and skip.fstype for skip in discovery.skipped)


def test_network_overlay_and_read_only_mounts_are_skipped():
    skips = skipped(run("plain-partition"))
    assert re.search("network", skips["/mnt/backup"].reason)
    assert skips["/var/lib/docker/overlay2/5d1b0c9e2f/merged"].fstype == "overlay"
    assert skips["/srv/archive"].fstype == "ext4"
    assert re.search("read-only", skips["/srv/archive"].reason)


def test_a_read_only_bind_of_a_writable_filesystem_keeps_it_planned():
    discovery = run("plain-partition")
    root = [fs for fs in discovery.filesystems if fs.devno == "202:2"]
    assert len(root) == 1 and "/srv/www-ro" in root[0].mount_points
    assert "/srv/www-ro" not in skipped(discovery)


def test_filesystem_partly_off_vbds_is_skipped_naming_the_other_disk():
    skip = skipped(run("lvm-vbd-and-iscsi"))["/srv/mixed"]
    assert "sda" in skip.reason and "xvdb" not in skip.reason


def test_non_xen_machine_plans_nothing_and_says_why():
    skips = skipped(run("non-xen"))
    for point in ("/", "/boot/efi", "/mnt/scratch"):
        assert re.search("VBD", skips[point].reason), skips[point]


def test_exclude_removes_from_the_default_set():
    discovery = run("lvm-two-vbds", exclude=["/srv/*"])
    assert [fs.mount_point for fs in discovery.filesystems] == ["/"]
    skips = skipped(discovery)
    for point in ("/srv/data", "/srv/small"):
        assert re.search("exclude", skips[point].reason)


def test_include_adds_a_filesystem_off_vbds():
    discovery = run("non-xen", include=["/mnt/*"])
    assert [(fs.mount_point, fs.disks, fs.vbds) for fs in discovery.filesystems] == [
        ("/mnt/scratch", ("loop0",), ())]


@pytest.mark.parametrize("scenario,mounts,devnos", [
    ("lvm-one-vbd", ["/boot"], {"202:1"}),
    ("lvm-one-vbd", ["/srv/shared data", "/home"], {"253:3", "253:2"}),
    ("plain-partition", ["/var/www"], {"202:2"}),
    ("btrfs-two-disks", ["/pool/snapshots", "/pool"], {"0:45"}),
])
def test_mounts_replaces_the_default_set(scenario, mounts, devnos):
    discovery = run(scenario, mounts=mounts)
    assert {fs.devno for fs in discovery.filesystems} == devnos
    assert len(discovery.filesystems) == len(devnos)


def test_mounts_naming_no_mount_point_is_a_config_error():
    with pytest.raises(ConfigError, match="/nope"):
        run("lvm-one-vbd", mounts=["/nope"])
