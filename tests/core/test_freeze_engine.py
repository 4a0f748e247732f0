"""The freeze engine on real ext4, xfs and btrfs filesystems on loop devices."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from testbed.loopfs import is_frozen, run
from testbed.waiting import wait_until
from xe_quiesce.config import parse_config
from xe_quiesce.core import freezer as freezer_module
from xe_quiesce.core.freezer import NOT_ATTEMPTED, Freezer
from xe_quiesce.core.journal import Journal
from xe_quiesce.core.session import QuiesceSession, make_plan
from xe_quiesce.errors import BusyError, FreezeError
from xe_quiesce.linux import rcu
from xe_quiesce.linux.fsops import FsOps
from xe_quiesce.linux.rcu import ExpeditedRcu

WRITER = "import os,sys; f=open(sys.argv[1],'w'); f.write('x'); f.flush(); os.fsync(f.fileno())"


def start_writer(path):
    return subprocess.Popen([sys.executable, "-c", WRITER, path])


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs"])
def test_writer_blocks_while_frozen_and_resumes_after_thaw(loopfs, config_for, fstype):
    fs = loopfs(fstype)
    session = QuiesceSession(config_for([fs.mount_point]), "cli")
    summary = session.start()
    try:
        assert summary["frozen"] == [fs.mount_point]
        assert is_frozen(fs.mount_point)
        writer = start_writer(fs.path("during-freeze"))
        with pytest.raises(subprocess.TimeoutExpired):
            writer.wait(timeout=0.7)
    finally:
        result = session.thaw()
    assert writer.wait(timeout=10) == 0
    assert result["result"] == "thawed"
    assert not is_frozen(fs.mount_point)
    assert result["window_seconds"] > 0.7


def test_nested_mounts_freeze_children_first(loopfs, config_for):
    parent = loopfs("ext4", name="parent")
    child = loopfs("xfs", name="child", mount_point=parent.path("inner"))
    config = config_for([parent.mount_point, child.mount_point])
    plan = make_plan(config)
    assert [fs.mount_point for fs in plan.filesystems] == [child.mount_point, parent.mount_point]
    assert [(e.first, e.then) for e in plan.edges] == [
        (plan.filesystems[0].devno, plan.filesystems[1].devno)]
    session = QuiesceSession(config, "cli", plan=plan)
    session.start()
    session.thaw()
    by_point = {state.mount_point: state for state in session.freezer.states}
    assert by_point[child.mount_point].frozen_at <= by_point[parent.mount_point].freeze_start
    assert by_point[parent.mount_point].thawed_at <= by_point[child.mount_point].thaw_start


def test_loop_image_on_a_planned_filesystem_freezes_first(loopfs, config_for):
    outer = loopfs("ext4", name="outer")
    inner = loopfs("ext4", name="inner", workdir=outer.mount_point,
                   mount_point=os.path.join(os.path.dirname(outer.mount_point), "inner"))
    plan = make_plan(config_for([outer.mount_point, inner.mount_point]))
    assert [fs.mount_point for fs in plan.filesystems] == [inner.mount_point, outer.mount_point]
    assert "image" in plan.edges[0].reason


def test_bind_mount_is_frozen_once(loopfs, config_for, tmp_path):
    fs = loopfs("ext4")
    os.makedirs(fs.path("sub"))
    bind = str(tmp_path / "bind")
    os.makedirs(bind)
    run("mount", "--bind", fs.path("sub"), bind)
    try:
        config = config_for([fs.mount_point, bind])
        plan = make_plan(config)
        assert len(plan.filesystems) == 1
        assert set(plan.filesystems[0].mount_points) == {fs.mount_point, bind}
        session = QuiesceSession(config, "cli", plan=plan)
        assert session.start()["frozen"] == [fs.mount_point]
        assert is_frozen(bind)
        session.thaw()
        assert not is_frozen(bind)
    finally:
        run("umount", bind)


def test_already_frozen_filesystem_fails_and_rolls_back(loopfs, config_for):
    free = loopfs("ext4", name="free")
    taken = loopfs("xfs", name="taken")
    run("fsfreeze", "-f", taken.mount_point)
    try:
        session = QuiesceSession(config_for([free.mount_point, taken.mount_point]), "cli")
        with pytest.raises(FreezeError, match="EBUSY"):
            session.start()
        assert not is_frozen(free.mount_point)
        assert is_frozen(taken.mount_point), "someone else's freeze must be left alone"
        assert session.journal.last_results()["cli"]["result"] == "failed"
    finally:
        run("fsfreeze", "-u", taken.mount_point)


def test_on_ebusy_tolerate_goes_on_and_leaves_the_other_freeze(loopfs, config_for):
    free = loopfs("ext4", name="free")
    taken = loopfs("ext4", name="taken")
    run("fsfreeze", "-f", taken.mount_point)
    try:
        config = config_for([free.mount_point, taken.mount_point],
                            extra="on-ebusy = tolerate")
        session = QuiesceSession(config, "cli")
        summary = session.start()
        assert summary["frozen"] == [free.mount_point]
        assert summary["busy_tolerated"] == [taken.mount_point]
        session.thaw()
        assert not is_frozen(free.mount_point)
        assert is_frozen(taken.mount_point)
    finally:
        run("fsfreeze", "-u", taken.mount_point)


def test_unmounted_between_plan_and_freeze_freezes_nothing(loopfs, config_for):
    kept = loopfs("ext4", name="kept")
    gone = loopfs("ext4", name="gone")
    config = config_for([kept.mount_point, gone.mount_point])
    plan = make_plan(config)
    gone.umount()
    session = QuiesceSession(config, "cli", plan=plan)
    with pytest.raises(FreezeError, match="no longer the planned"):
        session.start()
    assert not is_frozen(kept.mount_point)
    assert session.journal.read()["status"] == "failed"


def test_second_session_is_refused_while_one_is_frozen(loopfs, config_for):
    fs = loopfs("ext4")
    config = config_for([fs.mount_point])
    first = QuiesceSession(config, "xapi")
    first.start()
    try:
        with pytest.raises(BusyError, match="a xapi session"):
            QuiesceSession(config, "cli").start()
    finally:
        first.thaw()


HOLDER = """
import sys, time
from xe_quiesce.config import load_config
from xe_quiesce.core.session import QuiesceSession
session = QuiesceSession(load_config(sys.argv[1]), "cli")
session.start()
print("frozen", flush=True)
time.sleep(600)
"""


def _frozen_holder(config_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, config_path],
                              stdout=subprocess.PIPE, universal_newlines=True)
    assert holder.stdout.readline().strip() == "frozen"
    return holder


def wait_thawed(mount_points, limit):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if not any(is_frozen(point) for point in mount_points):
            return time.monotonic()
        time.sleep(0.05)
    return None


def test_sigkill_of_the_owner_thaws_and_the_next_command_reports_it(
        loopfs, write_config, xe_quiesce):
    a, b = loopfs("ext4", name="a"), loopfs("xfs", name="b")
    config = write_config([a.mount_point, b.mount_point], max_frozen=5)
    holder = _frozen_holder(config)
    assert is_frozen(a.mount_point) and is_frozen(b.mount_point)
    killed = time.monotonic()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    thawed = wait_thawed([a.mount_point, b.mount_point], 5 + 1)
    assert thawed is not None and thawed - killed <= 5 + 1
    status = xe_quiesce("status", "--json", "--config", config)
    assert status.returncode == 0, status.stderr
    last = json.loads(status.stdout)["last"]["cli"]
    assert last["result"] == "reconciled"
    assert "owner-exited" in last["message"]


def test_owner_and_guard_both_killed_next_command_thaws_from_journal(
        loopfs, write_config, xe_quiesce):
    fs = loopfs("ext4")
    config = write_config([fs.mount_point], max_frozen=30)
    holder = _frozen_holder(config)
    state = json.load(open(os.path.join(os.path.dirname(config), "run", "state.json")))
    os.kill(state["guard_process"][0], signal.SIGKILL)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    time.sleep(0.2)
    assert is_frozen(fs.mount_point), "with both killed nothing thaws until we reconcile"
    status = xe_quiesce("status", "--config", config)
    assert status.returncode == 0, status.stderr
    assert "thawed now: " + fs.mount_point in status.stderr
    assert not is_frozen(fs.mount_point)


def test_cli_freeze_returns_and_the_guard_thaws_at_the_deadline(
        loopfs, write_config, xe_quiesce):
    fs = loopfs("xfs")
    config = write_config([fs.mount_point], max_frozen=30)
    started = time.monotonic()
    frozen = xe_quiesce("freeze", "--timeout", "2", "--json", "--config", config)
    assert frozen.returncode == 0, frozen.stderr
    assert json.loads(frozen.stdout)["frozen"] == [fs.mount_point]
    assert is_frozen(fs.mount_point)
    thawed = wait_thawed([fs.mount_point], 2 + 1.5)
    assert thawed is not None and thawed - started <= 2 + 1.5
    status = xe_quiesce("status", "--json", "--config", config)
    last = json.loads(status.stdout)["last"]["cli"]
    assert "deadline guard thawed" in last["message"]


def test_cli_freeze_then_thaw(loopfs, write_config, xe_quiesce):
    a, b = loopfs("ext4", name="a"), loopfs("btrfs", name="b")
    config = write_config([a.mount_point, b.mount_point], max_frozen=30)
    assert xe_quiesce("freeze", "--config", config).returncode == 0
    status = json.loads(xe_quiesce("status", "--json", "--config", config).stdout)
    assert sorted(status["active"]["mounts"]) == sorted([a.mount_point, b.mount_point])
    thaw = xe_quiesce("thaw", "--json", "--config", config)
    assert thaw.returncode == 0, thaw.stderr
    assert json.loads(thaw.stdout)["result"] == "thawed"
    assert not is_frozen(a.mount_point) and not is_frozen(b.mount_point)
    again = xe_quiesce("thaw", "--config", config)
    assert again.returncode == 0 and "nothing was frozen" in again.stdout


def test_no_module_is_imported_between_freeze_and_thaw(loopfs, config_for):
    """An import while frozen may read or write (.pyc) a frozen filesystem."""
    fs = loopfs("ext4")
    session = QuiesceSession(config_for([fs.mount_point]), "cli")
    session.start()
    before = set(sys.modules)
    session.thaw()
    assert set(sys.modules) - before == set()
    assert sys.dont_write_bytecode


def test_stderr_on_the_frozen_filesystem_does_not_block(loopfs, write_config, xe_quiesce):
    """Logs made while frozen wait in memory; a detached freeze hands them to `thaw`."""
    fs, taken = loopfs("ext4", name="fs"), loopfs("ext4", name="taken")
    config = write_config([fs.mount_point, taken.mount_point], max_frozen=30,
                          extra="on-ebusy = tolerate")
    run("fsfreeze", "-f", taken.mount_point)
    try:
        with open(fs.path("stderr.log"), "w") as stderr:
            started = time.monotonic()
            frozen = subprocess.run(
                [sys.executable, "-m", "xe_quiesce.cli", "freeze", "--config", config],
                stdout=subprocess.PIPE, stderr=stderr, timeout=20)
        assert frozen.returncode == 0
        assert time.monotonic() - started < 10, "must not wait for the deadline"
        assert is_frozen(fs.mount_point)
        thaw = xe_quiesce("thaw", "--config", config)
        assert thaw.returncode == 0
        assert "already frozen by someone else" in thaw.stderr
    finally:
        run("fsfreeze", "-u", taken.mount_point)


def test_stdout_on_the_frozen_filesystem_does_not_block(loopfs, write_config, xe_quiesce):
    """`xe-quiesce freeze >> LOG` with LOG on a filesystem it freezes: the command returns
    at once (the summary would wait for the thaw there) and says so on stderr."""
    fs = loopfs("ext4")
    config = write_config([fs.mount_point], max_frozen=30)
    with open(fs.path("backup.log"), "a") as stdout:
        started = time.monotonic()
        frozen = subprocess.run(
            [sys.executable, "-m", "xe_quiesce.cli", "freeze", "--json", "--config", config],
            stdout=stdout, stderr=subprocess.PIPE, universal_newlines=True, timeout=25)
    try:
        assert frozen.returncode == 0, frozen.stderr
        assert time.monotonic() - started < 10, "must not wait for the deadline"
        assert is_frozen(fs.mount_point)
        assert "not written to standard output, a file on a filesystem now frozen" in \
            frozen.stderr
    finally:
        thaw = xe_quiesce("thaw", "--config", config)
    assert thaw.returncode == 0 and not is_frozen(fs.mount_point)
    with open(fs.path("backup.log")) as log:
        assert log.read() == ""


def test_this_machine_default_plan_freezes_nothing():
    """The test machine has no Xen VBD: the default rule must leave its root alone."""
    plan = make_plan(parse_config(""))
    assert plan.filesystems == []
    root = [skip for skip in plan.skipped if skip.mount_point == "/"]
    assert root and "Xen VBD" in root[0].reason


def test_a_journal_write_failing_after_the_freeze_thaws_at_once(loopfs, config_for):
    """An error after the FIFREEZEs (here the run dir refusing the 'frozen' record) must
    thaw now, not leave the guest to the guard's deadline."""
    class FullRunDir(Journal):
        def write(self, state):
            if state.get("status") == "frozen":
                raise OSError(28, "No space left on device")
            Journal.write(self, state)

    fs = loopfs("ext4")
    config = config_for([fs.mount_point], max_frozen=60)
    session = QuiesceSession(config, "cli", journal=FullRunDir(config.state.run_dir))
    with pytest.raises(OSError):
        session.start()
    assert not is_frozen(fs.mount_point)
    assert session.journal.read()["result"] == "failed"


class RecordingOps(FsOps):
    """The real kernel calls, noting which thread made each."""

    def __init__(self):
        self.calls = []

    def syncfs(self, fd):
        self.calls.append(("syncfs", fd, threading.get_ident()))
        FsOps.syncfs(self, fd)

    def freeze(self, fd):
        self.calls.append(("freeze", fd, threading.get_ident()))
        FsOps.freeze(self, fd)


def test_each_filesystem_is_synced_and_frozen_by_one_thread_started_before_the_window(
        loopfs, config_for, monkeypatch):
    """The syncfs pass starts the freeze threads; freeze() starts none (a thread start
    inside the window would delay the later FIFREEZEs)."""
    a, b, c = loopfs("ext4", name="a"), loopfs("xfs", name="b"), loopfs("ext4", name="c")
    config = config_for([a.mount_point, b.mount_point, c.mount_point])
    ops = RecordingOps()
    session = QuiesceSession(config, "cli", hooks=False, ops=ops)
    started = []
    real_start = freezer_module._thread.start_new_thread
    monkeypatch.setattr(freezer_module._thread, "start_new_thread",
                        lambda function, args: (started.append("worker"),
                                                real_start(function, args))[1])
    real_thread_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda thread: (
        started.append(thread.name), real_thread_start(thread))[1])
    real_freeze = Freezer.freeze

    def freeze(self, guard, deadline):
        started.append("freeze() begins")
        return real_freeze(self, guard, deadline)

    monkeypatch.setattr(Freezer, "freeze", freeze)
    session.start()
    try:
        assert started[-1] == "freeze() begins"
        assert started.count("worker") == 3
        by_fd = {}
        for call, fd, thread in ops.calls:
            by_fd.setdefault(fd, {})[call] = thread
        assert len(by_fd) == 3
        assert all(calls["syncfs"] == calls["freeze"] for calls in by_fd.values())
        assert len({calls["freeze"] for calls in by_fd.values()}) == 3
    finally:
        session.thaw()
    assert not any(is_frozen(fs.mount_point) for fs in (a, b, c))


def test_threads_started_for_a_freeze_that_never_comes_end_and_freeze_nothing(
        loopfs, config_for):
    a, b = loopfs("ext4", name="a"), loopfs("xfs", name="b")
    plan = make_plan(config_for([a.mount_point, b.mount_point]))
    freezer = Freezer(plan)
    freezer.open()
    freezer.sync()
    ended = list(freezer._workers)
    assert len(ended) == 2 and not any(event.is_set() for event in ended)
    freezer.close()
    assert all(event.wait(10) for event in ended)
    assert not is_frozen(a.mount_point) and not is_frozen(b.mount_point)
    assert [state.status for state in freezer.states] == [NOT_ATTEMPTED, NOT_ATTEMPTED]


REAL_KNOB = rcu.knob_path()


def real_knob():
    return rcu.current(REAL_KNOB)


class KnobWatchingOps(FsOps):
    """The real kernel calls, noting the real rcu_expedited knob at each FIFREEZE."""

    def __init__(self):
        self.seen = []

    def freeze(self, fd):
        self.seen.append(real_knob())
        FsOps.freeze(self, fd)


@pytest.mark.parametrize("setting, during", [("yes", "1"), ("no", "0")])
@pytest.mark.parametrize("count", [1, 3])
def test_rcu_grace_periods_are_expedited_only_while_the_fifreezes_run(
        loopfs, config_for, setting, during, count):
    """The machine's knob is 1 at every FIFREEZE (one or several threads) and 0 again
    once they returned, before the hold; `expedite-rcu = no` leaves it at 0."""
    if not ExpeditedRcu().ours:
        pytest.skip("this machine's rcu_expedited is not a free 0")
    mounts = [loopfs("ext4", name="r{}".format(i)).mount_point for i in range(count)]
    ops = KnobWatchingOps()
    session = QuiesceSession(config_for(mounts, extra="expedite-rcu = " + setting), "cli",
                             hooks=False, ops=ops)
    session.start()
    try:
        assert real_knob() == "0"
        assert ops.seen == [during] * count
    finally:
        session.thaw()
    assert real_knob() == "0"


def test_a_failed_freeze_gives_the_rcu_knob_back(loopfs, config_for):
    fs = loopfs("ext4")
    if not ExpeditedRcu().ours:
        pytest.skip("this machine's rcu_expedited is not a free 0")
    ops = FsOps()
    fd = ops.open(fs.mount_point)
    ops.freeze(fd)  # someone else's freeze: ours fails with EBUSY
    try:
        with pytest.raises(FreezeError, match="already frozen"):
            QuiesceSession(config_for([fs.mount_point]), "cli", hooks=False).start()
        assert real_knob() == "0"
    finally:
        ops.thaw(fd)
        ops.close(fd)


class StuckOps(FsOps):
    """A FIFREEZE of one mount that stays "in the kernel" until released, then fails
    (the kernel cannot be made to hang on demand; the rest is real)."""

    def __init__(self, stuck_point):
        self.stuck_point = stuck_point
        self.stuck_fd = None
        self.release = threading.Event()

    def open(self, mount_point):
        fd = FsOps.open(self, mount_point)
        if mount_point == self.stuck_point:
            self.stuck_fd = fd
        return fd

    def freeze(self, fd):
        if fd == self.stuck_fd:
            self.release.wait(30)
            raise OSError(5, "Input/output error")
        FsOps.freeze(self, fd)


class NoGuard(object):
    """The guard's announce/retract, for a freezer driven without a session."""

    def announce(self, index):
        pass

    def retract(self, index):
        pass


def test_a_fifreeze_still_running_at_the_deadline_fails_and_is_waited_for(
        loopfs, config_for):
    """At the deadline the freezer stops waiting for its workers: the session fails, what
    froze is thawed, and stuck() keeps the guard until the late FIFREEZE returned."""
    a, b = loopfs("ext4", name="a"), loopfs("xfs", name="b")
    plan = make_plan(config_for([a.mount_point, b.mount_point]))
    ops = StuckOps(b.mount_point)
    freezer = Freezer(plan, ops=ops)
    freezer.open()
    try:
        freezer.sync()
        with pytest.raises(FreezeError, match="b: freeze failed: FIFREEZE did not return "
                                              "before the deadline"):
            freezer.freeze(NoGuard(), time.time() + 2)
        assert not is_frozen(a.mount_point)
        assert freezer.stuck()
        ops.release.set()
        wait_until(lambda: not freezer.stuck(), 10, "the late FIFREEZE to return")
    finally:
        ops.release.set()
        freezer.close()
