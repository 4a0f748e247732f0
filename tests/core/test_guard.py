"""The deadline guard as the daemon runs it: one spawned process, armed per session over
a socket (fds by SCM_RIGHTS), restarted when it dies; real FIFREEZE on loop filesystems."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from testbed.loopfs import is_frozen
from testbed.waiting import wait_until
from xe_quiesce.core import guard
from xe_quiesce.core.guard import FDS_PER_PACKET, RETHAW_INTERVAL, Guard, GuardService
from xe_quiesce.core.journal import Journal
from xe_quiesce.core.session import QuiesceSession
from xe_quiesce.linux import procs
from xe_quiesce.linux.fsops import FsOps


@pytest.fixture
def service():
    guards = GuardService()
    guards.start()
    yield guards
    guards.stop()


def report_of(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


class Armed(object):
    """One filesystem's fd armed on the service for `seconds`; `.report` is read back."""

    def __init__(self, service, fs, tmp_path, seconds, name):
        self.ops = FsOps()
        self.fd = self.ops.open(fs.mount_point)
        self.path = str(tmp_path / "guard.json")
        self.held = service.arm([self.fd], [fs.mount_point], time.time() + seconds,
                                self.path, name)

    @property
    def report(self):
        return report_of(self.path)

    def close(self):
        self.held.release(5)
        self.ops.thaw(self.fd)
        self.ops.close(self.fd)


def cmdline(pid):
    with open("/proc/{}/cmdline".format(pid), "rb") as handle:
        return handle.read().split(b"\0")


def test_the_guard_is_a_program_of_its_own_not_a_fork(service):
    pid = service.identity[0]
    assert b"from xe_quiesce.core.guard import main" in b" ".join(cmdline(pid))
    assert os.getsid(pid) == pid  # its own session: a signal to our group spares it


def test_sessions_arm_the_one_guard_without_forking(loopfs, config_for, service):
    """Each session arms the running guard (same pid); this process never forks, with
    other threads running as in the daemon."""
    fs = loopfs("ext4")
    config = config_for([fs.mount_point])
    forks = []
    os.register_at_fork(before=lambda: forks.append(threading.active_count()))
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait, daemon=True)
    busy.start()
    try:
        pids = []
        for _ in range(2):
            session = QuiesceSession(config, "cli", hooks=False, guards=service)
            session.start()
            assert is_frozen(fs.mount_point)
            pids.append(session.journal.read()["guard_process"])
            assert session.thaw()["result"] == "thawed"
            assert not is_frozen(fs.mount_point)
    finally:
        stop.set()
    assert pids[0] == pids[1] == service.identity
    assert procs.alive(service.identity), "the guard stays for the next session"
    assert forks == []


def test_the_guard_thaws_at_the_deadline_and_serves_the_next_session(
        loopfs, config_for, service):
    fs = loopfs("xfs")
    config = config_for([fs.mount_point], max_frozen=30)
    session = QuiesceSession(config, "cli", hooks=False, guards=service)
    session.start(timeout=2)
    assert is_frozen(fs.mount_point)
    wait_until(lambda: not is_frozen(fs.mount_point), 2 + 3, "the deadline thaw")
    summary = session.thaw()
    assert summary["result"] == "deadline-thawed"
    assert "(deadline)" in summary["message"]
    again = QuiesceSession(config, "cli", hooks=False, guards=service)
    again.start()
    assert is_frozen(fs.mount_point)
    assert again.thaw()["result"] == "thawed"


def test_a_thaw_request_thaws_the_armed_session(loopfs, config_for, service):
    fs = loopfs("ext4")
    config = config_for([fs.mount_point], max_frozen=30)
    session = QuiesceSession(config, "cli", hooks=False, guards=service)
    session.start()
    assert guard.request_thaw(service.identity[0])
    wait_until(lambda: not is_frozen(fs.mount_point), 5, "the requested thaw")
    assert "(thaw requested)" in session.thaw()["message"]


HOLDER = """
import sys, time
from xe_quiesce.config import load_config
from xe_quiesce.core.guard import GuardService
from xe_quiesce.core.session import QuiesceSession
guards = GuardService()
guards.start()
QuiesceSession(load_config(sys.argv[1]), "cli", hooks=False, guards=guards).start()
print(guards.identity[0], flush=True)
time.sleep(600)
"""


def test_the_daemon_killed_while_frozen_the_guard_thaws_and_exits(loopfs, write_config):
    a, b = loopfs("ext4", name="a"), loopfs("xfs", name="b")
    config = write_config([a.mount_point, b.mount_point], max_frozen=60)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, config], stdout=subprocess.PIPE,
                              universal_newlines=True)
    guard_pid = int(holder.stdout.readline())
    assert is_frozen(a.mount_point) and is_frozen(b.mount_point)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    wait_until(lambda: not is_frozen(a.mount_point) and not is_frozen(b.mount_point), 5,
               "the owner-exited thaw")
    wait_until(lambda: not procs.alive([guard_pid, None]), 5, "the guard's exit")
    state = Journal(os.path.join(os.path.dirname(config), "run")).reconcile()
    assert "owner-exited" in state["message"]


def test_a_killed_guard_is_started_again_and_serves_the_next_session(
        loopfs, config_for, service):
    fs = loopfs("ext4")
    config = config_for([fs.mount_point])
    first = service.identity
    os.kill(first[0], signal.SIGKILL)
    wait_until(lambda: service.identity not in (None, first), 10, "a new guard")
    assert procs.alive(service.identity)
    session = QuiesceSession(config, "cli", hooks=False, guards=service)
    session.start()
    assert session.journal.read()["guard_process"] == service.identity
    assert session.thaw()["result"] == "thawed"


def test_a_freeze_completing_after_the_deadline_thaw_is_thawed_again(loopfs, tmp_path,
                                                                      service):
    """A FIFREEZE stuck in the kernel past the guard's thaw (here: made by hand right after
    its pass, asked for so as not to race a short deadline) is undone by the re-thaw while
    the owner lives."""
    fs = loopfs("ext4")
    armed = Armed(service, fs, tmp_path, 60, "late")
    try:
        armed.held.announce(0)
        assert guard.request_thaw(service.identity[0])
        wait_until(lambda: armed.report, 5, "the guard's thaw pass")
        assert armed.report["not_frozen"] == [fs.mount_point]
        armed.ops.freeze(armed.fd)  # the late FIFREEZE
        wait_until(lambda: not is_frozen(fs.mount_point), RETHAW_INTERVAL + 5, "the re-thaw")
        assert armed.report["thawed"] == [fs.mount_point]
    finally:
        armed.close()


def test_more_fds_than_one_message_carries_all_arrive(tmp_path, service):
    """Arming is split in packets; every fd reaches the guard beside its mount point.
    (FITHAW on directories that are not frozen: nothing here freezes anything.)"""
    points = []
    for index in range(2 * FDS_PER_PACKET + 5):
        points.append(str(tmp_path / "d{}".format(index)))
        os.mkdir(points[-1])
    fds = [os.open(point, os.O_RDONLY | os.O_DIRECTORY) for point in points]
    report = str(tmp_path / "guard.json")
    try:
        held = service.arm(fds, points, time.time() + 60, report, "many")
        for index in range(len(fds)):
            held.announce(index)
        assert guard.request_thaw(service.identity[0])
        wait_until(lambda: report_of(report), 5, "the guard's thaw pass")
        assert sorted(report_of(report)["not_frozen"]) == sorted(points)
        held.release(5)
    finally:
        for fd in fds:
            os.close(fd)


def test_release_returns_once_the_guard_closed_the_fds(loopfs, service, tmp_path):
    """The guard's copies of the fds pin the mount: after release it can be unmounted."""
    fs = loopfs("ext4")
    fd = os.open(fs.mount_point, os.O_RDONLY | os.O_DIRECTORY)
    held = service.arm([fd], [fs.mount_point], time.time() + 60,
                       str(tmp_path / "guard.json"), "pin")
    os.close(fd)
    held.release(5)
    fs.umount()  # raises if an fd still pins it


def test_without_a_service_the_session_guard_outlives_its_owner(loopfs, tmp_path):
    """The CLI's own guard (no daemon): spawned for the session, it keeps the deadline
    after the owner detached, then exits."""
    fs = loopfs("ext4")
    ops = FsOps()
    fd = ops.open(fs.mount_point)
    report = str(tmp_path / "guard.json")
    held = Guard.start([fd], [fs.mount_point], time.time() + 2, report, "cli")
    held.announce(0)
    ops.freeze(fd)
    held.detach()
    ops.close(fd)
    assert is_frozen(fs.mount_point)
    wait_until(lambda: not is_frozen(fs.mount_point), 2 + 3, "the deadline thaw")
    assert report_of(report)["reason"] == "deadline"
    wait_until(lambda: not procs.alive(held.identity), 5, "the session guard's exit")


def voluntary_switches(pid):
    with open("/proc/{}/status".format(pid)) as handle:
        for line in handle:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])


def test_announcing_a_freeze_does_not_wake_the_guard(loopfs, service, tmp_path):
    """The flags are shared memory: nothing of ours runs beside the FIFREEZE. (A count
    of the guard's own wake-ups around the calls, not a timing.)"""
    fs = loopfs("ext4")
    armed = Armed(service, fs, tmp_path, 60, "quiet")
    try:
        pid = service.identity[0]
        wait_until(lambda: open("/proc/{}/wchan".format(pid)).read() not in ("", "0"), 5,
                   "the guard back asleep after arming")
        before = voluntary_switches(pid)
        armed.held.announce(0)
        armed.ops.freeze(armed.fd)
        armed.held.retract(0)
        armed.held.announce(0)
        assert voluntary_switches(pid) == before
        assert guard.request_thaw(pid)
        wait_until(lambda: not is_frozen(fs.mount_point), 5, "the requested thaw")
        assert armed.report["thawed"] == [fs.mount_point], "the guard read the flag"
    finally:
        armed.close()


def test_a_retracted_filesystem_is_left_alone(loopfs, service, tmp_path):
    """A filesystem someone else froze (our FIFREEZE said EBUSY) is not the guard's."""
    fs = loopfs("ext4")
    armed = Armed(service, fs, tmp_path, 60, "theirs")
    armed.ops.freeze(armed.fd)  # someone else's freeze
    try:
        armed.held.announce(0)
        armed.held.retract(0)
        assert guard.request_thaw(service.identity[0])
        wait_until(lambda: armed.report, 5, "the guard's thaw pass")
        assert armed.report["thawed"] == [] and is_frozen(fs.mount_point)
    finally:
        armed.close()


def test_with_the_guard_gone_the_next_freeze_is_refused(service, tmp_path):
    fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        held = service.arm([fd], [str(tmp_path)], time.time() + 60,
                           str(tmp_path / "guard.json"), "gone")
        pid = service.identity[0]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not procs.alive([pid, None]), 5, "the guard's death")
        with pytest.raises(guard.FreezeError, match="guard is gone"):
            held.announce(0)
        held.release(5)
    finally:
        os.close(fd)


@pytest.mark.parametrize("held_knob, after", [(True, "0"), (False, "1")])
def test_an_owner_gone_while_holding_rcu_expedited_has_the_guard_put_it_back(
        service, tmp_path, held_knob, after):
    """The owner dies between setting the knob and its FIFREEZEs' return: the guard, told
    by the shared flag, writes the 0 back; a knob the owner gave back is not touched."""
    knob = tmp_path / "rcu_expedited"
    knob.write_text("1")
    fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    report = str(tmp_path / "guard.json")
    try:
        held = service.arm([fd], [str(tmp_path)], time.time() + 60, report, "rcu",
                           rcu_knob=str(knob))
        held.expediting(True)
        if not held_knob:
            held.expediting(False)
        held._close()  # as at the owner's death: EOF without "X"
        wait_until(lambda: report_of(report), 5, "the guard's owner-exited pass")
        assert report_of(report)["reason"] == "owner-exited"
        assert knob.read_text() == after
    finally:
        os.close(fd)
