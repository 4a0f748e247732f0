"""xe_quiesce.linux.blockdev: the block-device stack, from fixture sysfs trees and this machine.

The fixture trees under tests/fixtures/sysfs/ are built by tests/fixtures/build_sysfs.py
and committed; the last tests read the live /sys for loop devices and a two-device btrfs
made here, and check that capture_sysfs.sh reproduces that view.
"""
import contextlib
import os
import shutil
import subprocess

import pytest

from tests.fixtures import build_sysfs
from xe_quiesce.linux.blockdev import BlockDevice, BlockTopology

FIXTURES = build_sysfs.DEFAULT_DEST
CAPTURE = os.path.join(os.path.dirname(build_sysfs.__file__), "capture_sysfs.sh")


def topology(scenario):
    return BlockTopology(root=os.path.join(FIXTURES, scenario))


def snapshot(top):
    """Every file, link and directory under `top`, with contents and link targets."""
    tree = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, top)
            if os.path.islink(path):
                tree[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                tree[rel] = ("dir",)
            else:
                with open(path, "rb") as handle:
                    tree[rel] = ("file", handle.read())
    return tree


def copy_scenario(scenario, tmp_path):
    root = str(tmp_path / scenario)
    shutil.copytree(os.path.join(FIXTURES, scenario), root, symlinks=True)
    return root


def replace_link(path, target):
    os.remove(path)
    os.symlink(target, path)


def write(path, text):
    with open(path, "w") as handle:
        handle.write(text)


# -- the committed trees --------------------------------------------------------------

def test_committed_trees_equal_the_builders_output(tmp_path):
    build_sysfs.build(str(tmp_path))
    for scenario in build_sysfs.SCENARIOS:
        built = snapshot(str(tmp_path / scenario))
        committed = snapshot(os.path.join(FIXTURES, scenario))
        assert committed == built, "rerun tests/fixtures/build_sysfs.py for " + scenario


def test_builder_replaces_a_stale_scenario_and_keeps_other_trees(tmp_path):
    stale = tmp_path / "md-raid1" / "sys" / "stale"
    stale.parent.mkdir(parents=True)
    stale.write_text("left over")
    captured = tmp_path / "captured-guest" / "keep"
    captured.parent.mkdir()
    captured.write_text("a real capture")
    build_sysfs.build(str(tmp_path))
    assert not stale.exists()
    assert captured.read_text() == "a real capture"


# -- each scenario: stack, disks, VBDs, description -------------------------------------

STACKS = [
    # scenario, devno, kind, label, disks, vbd devids, describe
    ("plain-partition", "202:2", "partition", None, ["xvda"], [51712],
     "xvda2 <- xvda (vbd 51712)"),
    ("plain-partition", "202:0", "disk", None, ["xvda"], [51712], "xvda (vbd 51712)"),
    ("lvm-one-vbd", "253:0", "lvm", "vg0-root", ["xvda"], [51712],
     "lvm vg0-root <- xvda2 <- xvda (vbd 51712)"),
    ("lvm-one-vbd", "253:3", "lvm", "vg0-srv--data", ["xvda"], [51712],
     "lvm vg0-srv--data <- xvda2 <- xvda (vbd 51712)"),
    ("lvm-two-vbds", "253:0", "lvm", "data-big", ["xvdb", "xvdc"], [51728, 51744],
     "lvm data-big <- [xvdb (vbd 51728), xvdc (vbd 51744)]"),
    ("lvm-two-vbds", "253:1", "lvm", "data-small", ["xvdc"], [51744],
     "lvm data-small <- xvdc (vbd 51744)"),
    ("luks-on-lvm", "253:2", "crypt", "vault", ["xvda"], [51712],
     "crypt vault <- lvm vg0-vault <- xvda2 <- xvda (vbd 51712)"),
    ("md-raid1", "9:0", "md", None, ["xvdb", "xvdc"], [51728, 51744],
     "md md0 (raid1) <- [xvdb1 <- xvdb (vbd 51728), xvdc1 <- xvdc (vbd 51744)]"),
    ("btrfs-two-disks", "202:16", "disk", None, ["xvdb"], [51728], "xvdb (vbd 51728)"),
    ("lvm-vbd-and-iscsi", "253:0", "lvm", "data-mixed", ["sda", "xvdb"], [None, 51728],
     "lvm data-mixed <- [sda, xvdb (vbd 51728)]"),
    ("non-xen", "254:1", "partition", None, ["vda"], [None], "vda1 <- vda"),
    ("non-xen", "7:0", "loop", None, ["loop0"], [None],
     "loop loop0 (/var/lib/images/scratch.img)"),
]


@pytest.mark.parametrize("scenario,devno,kind,label,disks,vbds,line", STACKS)
def test_stack_of_each_scenario(scenario, devno, kind, label, disks, vbds, line):
    topo = topology(scenario)
    device = topo.by_devno(*map(int, devno.split(":")))
    assert (device.kind, device.label, f"{device.major}:{device.minor}") == (
        kind, label, devno)
    bottom = topo.disks(device)
    assert [d.name for d in bottom] == disks
    assert [topo.vbd_devid(d) for d in bottom] == vbds
    assert topo.describe(device) == line
    assert topo.problems == []


def test_lvm_volume_is_the_whole_chain_down_to_the_disk():
    xvda = BlockDevice("xvda", "disk", None, 202, 0, ())
    xvda2 = BlockDevice("xvda2", "partition", None, 202, 2, (xvda,))
    assert topology("lvm-one-vbd").by_devno(253, 0) == BlockDevice(
        "dm-0", "lvm", "vg0-root", 253, 0, (xvda2,))


def test_luks_mapping_sits_on_the_lvm_volume():
    vault = topology("luks-on-lvm").by_devno(253, 2)
    assert [(d.name, d.kind, d.label) for d in vault.lower] == [("dm-1", "lvm", "vg0-vault")]


def test_disks_are_deduplicated_in_first_seen_order():
    topo = topology("lvm-two-vbds")
    big, small = topo.by_devno(253, 0), topo.by_devno(253, 1)
    both = BlockDevice("virtual", "dm", None, 253, 99, (small, big))
    assert [d.name for d in topo.disks(both)] == ["xvdc", "xvdb"]


def test_a_partition_is_no_vbd_only_its_disk_is():
    topo = topology("plain-partition")
    assert topo.vbd_devid(topo.by_devno(202, 1)) is None
    assert topo.vbd_devid(topo.by_devno(202, 0)) == 51712


@pytest.mark.parametrize("scenario,source,name", [
    ("plain-partition", "/dev/xvda2", "xvda2"),
    ("plain-partition", "/dev/xvda", "xvda"),
    ("lvm-one-vbd", "/dev/mapper/vg0-root", "dm-0"),
    ("lvm-one-vbd", "/dev/vg0/root", "dm-0"),
    ("lvm-one-vbd", "/dev/vg0/srv-data", "dm-3"),
    ("lvm-one-vbd", "/dev/mapper/vg0-srv--data", "dm-3"),
    ("lvm-one-vbd", "/dev/dm-2", "dm-2"),
    ("luks-on-lvm", "/dev/mapper/vault", "dm-2"),
    ("md-raid1", "/dev/md0", "md0"),
    ("md-raid1", "/dev/md/0", "md0"),
    ("btrfs-two-disks", "/dev/xvdc", "xvdc"),
    ("non-xen", "/dev/loop0", "loop0"),
    ("non-xen", "/dev/vda15", "vda15"),
])
def test_by_source_resolves_through_sysfs_names(scenario, source, name):
    assert topology(scenario).by_source(source).name == name


@pytest.mark.parametrize("source", [
    "/dev/root", "/dev/disk/by-uuid/0b7c3b43-5f43-4e8f-9d4c-9a3e7f0e1b2c", "/dev/mapper/nope",
    "/dev/vg0/nope", "/dev/md/data", "nas.example.com:/export", "tmpfs", "/dev/", "/dev/a/b/c",
])
def test_unresolvable_sources_give_none_with_a_reason(source):
    topo = topology("lvm-one-vbd")
    assert topo.by_source(source) is None
    assert source in topo.unresolved[source]


def test_unknown_devno_gives_none_with_a_reason():
    topo = topology("plain-partition")
    assert topo.by_devno(0, 45) is None
    assert topo.by_devno(202, 99) is None
    assert set(topo.unresolved) == {"0:45", "202:99"}


def test_named_md_array(tmp_path):
    machine = build_sysfs.Machine()
    machine.xen_disk("xvdb")
    machine.xen_disk("xvdc")
    machine.md(127, "raid1", ["xvdb", "xvdc"], array="backup")
    machine.write(str(tmp_path))
    topo = BlockTopology(str(tmp_path))
    md = topo.by_source("/dev/md/backup")
    assert (md.name, md.kind, md.label) == ("md_backup", "md", "backup")
    assert topo.describe(md) == "md backup (raid1) <- [xvdb (vbd 51728), xvdc (vbd 51744)]"


def test_btrfs_members_from_either_device():
    topo = topology("btrfs-two-disks")
    for source in ("/dev/xvdb", "/dev/xvdc"):
        members = topo.btrfs_members(topo.by_source(source))
        assert [d.name for d in members] == ["xvdb", "xvdc"]
    assert topo.btrfs_members(topo.by_source("/dev/xvda1")) == []


def test_btrfs_members_without_any_btrfs():
    topo = topology("plain-partition")
    assert topo.btrfs_members(topo.by_devno(202, 2)) == []


def test_loop_backing_file():
    topo = topology("non-xen")
    assert topo.loop_backing_file(topo.by_devno(7, 0)) == "/var/lib/images/scratch.img"
    assert topo.loop_backing_file(topo.by_devno(254, 1)) is None


def test_non_xen_machine_has_no_vbd_at_all():
    topo = topology("non-xen")
    for entry in os.listdir(os.path.join(FIXTURES, "non-xen", "sys", "dev", "block")):
        device = topo.by_devno(*map(int, entry.split(":")))
        assert all(topo.vbd_devid(d) is None for d in topo.disks(device))


# -- strange trees never crash ----------------------------------------------------------

@pytest.mark.parametrize("nodename", [
    "device/vbd/abc", "", "\n", "device/vbd/", "device/vbd/51712/extra", "device/vif/0",
    "backend/vbd/0/51712", "\udcff\udcfe", "device/vbd/-1", "x" * 70000,
])
def test_garbage_nodename_is_no_vbd(tmp_path, nodename):
    root = copy_scenario("plain-partition", tmp_path)
    with open(os.path.join(root, "sys/devices/vbd-51712/nodename"), "wb") as handle:
        handle.write(nodename.encode("utf-8", "surrogateescape"))
    topo = BlockTopology(root)
    xvda = topo.by_devno(202, 0)
    assert topo.vbd_devid(xvda) is None
    assert topo.describe(topo.by_devno(202, 2)) == "xvda2 <- xvda"
    assert any("nodename" in problem for problem in topo.problems)


def test_nodename_whitespace_is_tolerated(tmp_path):
    root = copy_scenario("plain-partition", tmp_path)
    write(os.path.join(root, "sys/devices/vbd-51712/nodename"), " device/vbd/51712 \n\n")
    topo = BlockTopology(root)
    assert topo.vbd_devid(topo.by_devno(202, 0)) == 51712


def test_missing_nodename_is_silently_no_vbd(tmp_path):
    root = copy_scenario("plain-partition", tmp_path)
    os.remove(os.path.join(root, "sys/devices/vbd-51712/nodename"))
    topo = BlockTopology(root)
    assert topo.vbd_devid(topo.by_devno(202, 0)) is None
    assert topo.problems == []


@pytest.mark.parametrize("content", ["banana", "", "202", "202:x", ":1"])
def test_slave_without_usable_dev_is_left_out(tmp_path, content):
    root = copy_scenario("lvm-two-vbds", tmp_path)
    write(os.path.join(root, "sys/devices/vbd-51744/block/xvdc/dev"), content)
    topo = BlockTopology(root)
    big = topo.by_devno(253, 0)
    assert [d.name for d in topo.disks(big)] == ["xvdb"]
    assert topo.by_devno(202, 32) is None
    assert "unusable" in topo.unresolved["202:32"]
    assert any("xvdc" in problem for problem in topo.problems)


def test_attribute_that_is_a_directory(tmp_path):
    root = copy_scenario("plain-partition", tmp_path)
    dev = os.path.join(root, "sys/devices/vbd-51712/block/xvda/xvda1/dev")
    os.remove(dev)
    os.mkdir(dev)
    topo = BlockTopology(root)
    assert topo.by_devno(202, 1) is None
    assert any("Is a directory" in problem for problem in topo.problems)


def test_dangling_slave_link_is_skipped(tmp_path):
    root = copy_scenario("lvm-two-vbds", tmp_path)
    replace_link(os.path.join(root, "sys/devices/virtual/block/dm-0/slaves/xvdc"),
                 "../../../../vbd-99999/block/xvdz")
    topo = BlockTopology(root)
    assert topo.describe(topo.by_devno(253, 0)) == "lvm data-big <- xvdb (vbd 51728)"
    assert any("dangling" in problem for problem in topo.problems)


def test_missing_slaves_directory_means_no_lower_device(tmp_path):
    root = copy_scenario("lvm-one-vbd", tmp_path)
    shutil.rmtree(os.path.join(root, "sys/devices/virtual/block/dm-0/slaves"))
    topo = BlockTopology(root)
    dm0 = topo.by_devno(253, 0)
    assert dm0.lower == ()
    assert topo.disks(dm0) == [dm0]


@pytest.mark.parametrize("links", [
    [("dm-0", "dm-0")],
    [("dm-0", "dm-1"), ("dm-1", "dm-0")],
    [("dm-0", "dm-1"), ("dm-1", "dm-2"), ("dm-2", "dm-0")],
])
def test_loops_in_slaves_terminate(tmp_path, links):
    root = copy_scenario("lvm-one-vbd", tmp_path)
    for upper, lower in links:
        os.symlink("../../" + lower,
                   os.path.join(root, "sys/devices/virtual/block", upper, "slaves", lower))
    topo = BlockTopology(root)
    for minor in range(4):
        device = topo.by_devno(253, minor)
        assert "xvda" in [d.name for d in topo.disks(device)]
        topo.describe(device)
    assert any("loop in the device stack" in problem for problem in topo.problems)


def test_symlink_loop_in_sysfs(tmp_path):
    root = copy_scenario("plain-partition", tmp_path)
    os.symlink("253:9", os.path.join(root, "sys/dev/block/253:9"))
    os.symlink("b", os.path.join(root, "sys/dev/block/a"))
    os.symlink("a", os.path.join(root, "sys/dev/block/b"))
    topo = BlockTopology(root)
    assert topo.by_devno(253, 9) is None
    assert topo.by_source("/dev/xvda2").name == "xvda2"
    assert any("too many levels" in problem for problem in topo.problems)


def test_partition_whose_parent_is_no_block_device(tmp_path):
    root = copy_scenario("plain-partition", tmp_path)
    os.remove(os.path.join(root, "sys/devices/vbd-51712/block/xvda/dev"))
    topo = BlockTopology(root)
    xvda1 = topo.by_devno(202, 1)
    assert (xvda1.kind, xvda1.lower) == ("partition", ())


def test_dangling_btrfs_member_is_skipped(tmp_path):
    root = copy_scenario("btrfs-two-disks", tmp_path)
    devices = os.path.join(root, "sys/fs/btrfs", build_sysfs.BTRFS_FSID, "devices")
    replace_link(os.path.join(devices, "xvdc"), "../../../../devices/vbd-51744/block/gone")
    topo = BlockTopology(root)
    assert [d.name for d in topo.btrfs_members(topo.by_source("/dev/xvdb"))] == ["xvdb"]
    assert any("dangling" in problem for problem in topo.problems)


def test_empty_root(tmp_path):
    topo = BlockTopology(str(tmp_path / "nothing-here"))
    fake = BlockDevice("xvda", "disk", None, 202, 0, ())
    assert topo.by_devno(202, 0) is None
    assert topo.by_source("/dev/xvda") is None
    assert topo.btrfs_members(fake) == []
    assert topo.vbd_devid(fake) is None
    assert topo.loop_backing_file(fake) is None
    assert topo.disks(fake) == [fake]
    assert topo.describe(fake) == "xvda"


@pytest.fixture
def outside(tmp_path):
    """A xenbus node outside the fixture root that no lookup may read."""
    node = tmp_path / "outside" / "vbd-4242"
    node.mkdir(parents=True)
    (node / "nodename").write_text("device/vbd/4242\n")
    return str(node)


def test_absolute_link_stays_inside_root(tmp_path, outside):
    root = copy_scenario("plain-partition", tmp_path)
    replace_link(os.path.join(root, "sys/devices/vbd-51712/block/xvda/device"), outside)
    topo = BlockTopology(root)
    assert topo.vbd_devid(topo.by_devno(202, 0)) is None
    inside = root + outside
    os.makedirs(inside)
    write(os.path.join(inside, "nodename"), "device/vbd/7\n")
    topo = BlockTopology(root)
    assert topo.vbd_devid(topo.by_devno(202, 0)) == 7


def test_dotdot_link_stays_inside_root(tmp_path, outside):
    root = copy_scenario("plain-partition", tmp_path)
    replace_link(os.path.join(root, "sys/devices/vbd-51712/block/xvda/device"),
                 "../" * 40 + outside.lstrip("/"))
    topo = BlockTopology(root)
    assert topo.vbd_devid(topo.by_devno(202, 0)) is None


# -- this machine's real sysfs ----------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("losetup"),
                                reason="needs root and losetup for loop devices")


def run(*argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def loop_devices(tmp_path, *names, size_mb=16):
    """Sparse image files attached to loop devices; detached whatever happens."""
    devices = []
    try:
        for name in names:
            image = str(tmp_path / name)
            with open(image, "wb") as handle:
                handle.truncate(size_mb << 20)
            devices.append((run("losetup", "--find", "--show", image), image))
        yield devices
    finally:
        for device, _ in devices:
            subprocess.run(["losetup", "-d", device], check=False, stderr=subprocess.DEVNULL)


def devno(path):
    rdev = os.stat(path).st_rdev
    return os.major(rdev), os.minor(rdev)


@needs_root
def test_real_loop_device(tmp_path):
    with loop_devices(tmp_path, "image with space.raw") as [(device, image)]:
        topo = BlockTopology("/")
        loop = topo.by_devno(*devno(device))
        assert (loop.name, loop.kind, loop.lower) == (os.path.basename(device), "loop", ())
        assert topo.by_source(device) == loop
        assert topo.loop_backing_file(loop) == image
        assert topo.disks(loop) == [loop]
        assert topo.vbd_devid(loop) is None
        assert topo.describe(loop) == f"loop {loop.name} ({image})"


def assert_same_view(live, captured, devices):
    for device in devices:
        copy = captured.by_devno(device.major, device.minor)
        assert copy == device
        assert captured.describe(copy) == live.describe(device)
        assert captured.loop_backing_file(copy) == live.loop_backing_file(device)
        assert captured.btrfs_members(copy) == live.btrfs_members(device)
        assert [captured.vbd_devid(d) for d in captured.disks(copy)] == [
            live.vbd_devid(d) for d in live.disks(device)]


@needs_root
def test_real_btrfs_over_two_loops_and_its_capture(tmp_path):
    """btrfs RAID1 on two loop devices: members from the live /sys/fs/btrfs, and the
    capture script reproduces every answer for every block device of this machine
    (other processes' loop devices excepted: they may be re-attached between the capture
    and the live read)."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    with loop_devices(tmp_path, "a.img", "b.img", size_mb=128) as devices:
        (dev_a, _), (dev_b, _) = devices
        run("mkfs.btrfs", "-q", "-f", "-d", "raid1", "-m", "raid1", dev_a, dev_b)
        run("mount", "-t", "btrfs", dev_a, str(mount_point))
        try:
            live = BlockTopology("/")
            member = live.by_source(dev_a)
            members = live.btrfs_members(member)
            assert sorted(d.name for d in members) == sorted(
                os.path.basename(d) for d in (dev_a, dev_b))
            captured_root = str(tmp_path / "captured")
            subprocess.run([CAPTURE, captured_root], check=True)
            captured = BlockTopology(captured_root)
            ours = {os.path.basename(d) for d in (dev_a, dev_b)}
            every = [live.by_devno(*map(int, entry.split(":")))
                     for entry in os.listdir("/sys/dev/block")]
            stable = [d for d in every if d is not None
                      and (d.name in ours or not d.name.startswith("loop"))]
            assert ours <= {d.name for d in stable}
            assert_same_view(live, captured, stable)
            assert captured.problems == []
            assert os.path.getsize(os.path.join(captured_root, "proc/self/mountinfo")) > 0
        finally:
            run("umount", str(mount_point))
