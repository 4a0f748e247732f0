"""The plan graph on made-up filesystems: order, concurrency groups, cycles broken."""
from types import SimpleNamespace

from xe_quiesce.core.plan import build_plan
from xe_quiesce.linux.mountinfo import parse_mountinfo

MOUNTS = parse_mountinfo("""
1 0 202:1 / / rw - ext4 /dev/xvda1 rw
2 1 202:17 / /srv rw - xfs /dev/xvdb1 rw
3 2 202:33 / /srv/db rw - ext4 /dev/xvdc1 rw
4 1 202:49 / /home rw - ext4 /dev/xvdd1 rw
5 3 202:1 /srv/loop /srv/db/back rw - ext4 /dev/xvda1 rw
""")


def fs_of(devno):
    entries = tuple(entry for entry in MOUNTS if "{}:{}".format(entry.major, entry.minor) == devno)
    return SimpleNamespace(devno=devno, mount_point=entries[0].mount_point,
                           mount_points=tuple(e.mount_point for e in entries),
                           entries=entries, devices=(), fstype="ext4", source="", stack="",
                           disks=(), vbds=())


class NoLoops(object):
    def loop_backing_file(self, device):
        return None


def plan_of(devnos):
    discovery = SimpleNamespace(filesystems=[fs_of(d) for d in devnos], mounts=MOUNTS, skipped=[])
    return build_plan(discovery, NoLoops())


def test_children_before_parents_and_independent_ones_unordered():
    plan = plan_of(["202:1", "202:17", "202:33", "202:49"])
    order = [fs.mount_point for fs in plan.filesystems]
    assert order.index("/srv/db") < order.index("/srv") < order.index("/")
    assert order.index("/home") < order.index("/")
    assert plan.prerequisites["202:49"] == set()
    assert plan.prerequisites["202:17"] == {"202:33"}
    assert plan.prerequisites["202:1"] == {"202:17", "202:49"}


def test_a_bind_mount_that_closes_a_cycle_is_dropped_and_reported():
    # /srv/db/back is a bind of / inside /srv/db: "/" inside "/srv/db" inside "/"
    plan = plan_of(["202:1", "202:33"])
    assert len(plan.filesystems) == 2
    assert len(plan.cycles) == 1
    order = [fs.mount_point for fs in plan.filesystems]
    assert sorted(order) == ["/", "/srv/db"]
