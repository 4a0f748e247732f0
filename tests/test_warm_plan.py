"""The daemon's warm plan: made once, made again exactly when the mount table changes
(real mounts of loop filesystems, the kernel's POLLPRI on /proc/self/mountinfo)."""
import os

import pytest

from tests.loopfs import is_frozen, run
from xe_quiesce.errors import ConfigError
from xe_quiesce.session import QuiesceSession, make_plan
from xe_quiesce.warm_plan import WarmPlan


class Counting(object):
    def __init__(self, build):
        self.build = build
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.build()


@pytest.fixture
def warm():
    made = []

    def make(build):
        made.append(WarmPlan(build))
        return made[-1]
    yield make
    for plan in made:
        plan.close()


def test_the_plan_is_made_once_while_the_mounts_stay(loopfs, config_for, warm):
    fs = loopfs("ext4")
    build = Counting(lambda: make_plan(config_for([fs.mount_point])))
    plans = warm(build)
    first = plans()
    assert plans() is first and plans() is first
    assert build.calls == 1
    assert [f.mount_point for f in first.filesystems] == [fs.mount_point]


def test_a_mount_or_unmount_anywhere_makes_it_again(loopfs, config_for, tmp_path, warm):
    fs = loopfs("ext4")
    build = Counting(lambda: make_plan(config_for([fs.mount_point])))
    plans = warm(build)
    plans()
    other = str(tmp_path / "other")
    os.makedirs(other)
    run("mount", "-t", "tmpfs", "none", other)
    try:
        plans()
        assert build.calls == 2
        plans()
        assert build.calls == 2, "one change is seen once"
    finally:
        run("umount", other)
    plans()
    assert build.calls == 3


def test_a_failed_plan_is_not_kept(warm):
    answers = [ConfigError("[freeze] mounts: /x is not a mount point"), "plan"]

    def build():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    plans = warm(build)
    with pytest.raises(ConfigError):
        plans()
    assert plans() == "plan"


def test_a_filesystem_replaced_under_the_same_mount_point_is_the_one_frozen(
        loopfs, config_for, warm):
    """The plan named the old filesystem; after an unmount and a new mount there, the
    next session plans and freezes the new one (a stale plan would refuse it)."""
    old = loopfs("ext4", name="old")
    config = config_for([old.mount_point])
    plans = warm(lambda: make_plan(config))
    before = plans().filesystems[0].devno
    old.umount()
    new = loopfs("xfs", name="new", mount_point=old.mount_point)
    session = QuiesceSession(config, "cli", hooks=False, planner=plans)
    assert session.start()["frozen"] == [new.mount_point]
    try:
        assert is_frozen(new.mount_point)
        assert session.plan.filesystems[0].devno != before
        assert session.plan.filesystems[0].fstype == "xfs"
    finally:
        session.thaw()
    assert not is_frozen(new.mount_point)
