"""The daemon's warm plan: made once, made again exactly when the mount entries it
depends on change (real mounts of loop filesystems, the kernel's POLLPRI on
/proc/self/mountinfo)."""
import os

import pytest

from testbed.loopfs import is_frozen, run
from xe_quiesce.core.discovery import plan_inputs
from xe_quiesce.core.session import QuiesceSession, make_plan
from xe_quiesce.core.warm_plan import WarmPlan
from xe_quiesce.errors import ConfigError
from xe_quiesce.linux.mountinfo import read_mountinfo


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

    def make(build, config=None, inputs=None):
        made.append(WarmPlan(build, inputs or (
            lambda: plan_inputs(config.freeze, read_mountinfo()))))
        return made[-1]
    yield make
    for plan in made:
        plan.close()


def test_the_plan_is_made_once_while_the_mounts_stay(loopfs, config_for, warm):
    fs = loopfs("ext4")
    config = config_for([fs.mount_point])
    build = Counting(lambda: make_plan(config))
    plans = warm(build, config)
    first = plans()
    assert plans() is first and plans() is first
    assert build.calls == 1
    assert [f.mount_point for f in first.filesystems] == [fs.mount_point]


def test_each_change_of_the_mount_table_is_seen_once(tmp_path, warm):
    inputs = Counting(lambda: ())
    plans = warm(lambda: "plan", inputs=inputs)
    plans()
    assert inputs.calls == 1
    plans()
    assert inputs.calls == 1, "no change, no reading"
    other = str(tmp_path / "other")
    os.makedirs(other)
    run("mount", "-t", "tmpfs", "none", other)
    try:
        plans()
        assert inputs.calls == 2
        plans()
        assert inputs.calls == 2, "one change is seen once"
    finally:
        run("umount", other)
    plans()
    assert inputs.calls == 3


def test_only_a_change_of_what_the_plan_depends_on_makes_it_again(
        loopfs, config_for, tmp_path, warm):
    planned = loopfs("ext4", name="planned")
    config = config_for([planned.mount_point])
    build = Counting(lambda: make_plan(config))
    plans = warm(build, config)
    plans()
    scratch = str(tmp_path / "scratch")
    os.makedirs(scratch)
    run("mount", "-t", "tmpfs", "none", scratch)
    try:
        loopfs("xfs", name="unlisted")
        plans()
        assert build.calls == 1, "a tmpfs and an unlisted filesystem change no plan"
    finally:
        run("umount", scratch)
    run("mount", "-o", "remount,ro", planned.mount_point)
    try:
        assert plans().filesystems == [] and build.calls == 2
    finally:
        run("mount", "-o", "remount,rw", planned.mount_point)
    assert [fs.mount_point for fs in plans().filesystems] == [planned.mount_point]
    assert build.calls == 3


def test_a_failed_plan_is_not_kept(warm):
    answers = [ConfigError("[freeze] mounts: /x is not a mount point"), "plan"]

    def build():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    plans = warm(build, inputs=lambda: ())
    with pytest.raises(ConfigError):
        plans()
    assert plans() == "plan"


def test_a_filesystem_replaced_under_the_same_mount_point_is_the_one_frozen(
        loopfs, config_for, warm):
    """The plan named the old filesystem; after an unmount and a new mount there, the
    next session plans and freezes the new one (a stale plan would refuse it)."""
    old = loopfs("ext4", name="old")
    config = config_for([old.mount_point])
    plans = warm(lambda: make_plan(config), config)
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
