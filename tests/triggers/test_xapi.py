"""`xe-quiesce run` against a real xenstored, the dom0 simulator and real loop filesystems.

The daemon runs as its own process (`python -m xe_quiesce.cli run`), as systemd runs
it; the test process plays dom0 with the product's host roles (testbed/dom0sim.py,
tests/faulty_snapwatchd.py).
"Frozen" is always checked with a probe FIFREEZE (EBUSY = frozen), and only at moments
when the daemon cannot be freezing concurrently.
"""
import functools
import json
import logging
import os
import re
import signal
import socket
import threading
import time
import uuid

import pytest

from testbed.dom0sim import copy_images
from testbed.guestd import GuestDaemon
from testbed.loopfs import is_frozen
from testbed.waiting import wait_until
from tests import xstrace
from tests.faulty_snapwatchd import FaultyDom0Sim
from xe_quiesce.core.session import QuiesceSession
from xe_quiesce.core.slot import SessionSlot
from xe_quiesce.host.snapwatchd_role import SnapshotResult
from xe_quiesce.host.xapi_role import FAILED, XapiError
from xe_quiesce.triggers.xapi import XapiTrigger
from xe_quiesce.xenstore import (
    XenstoreClient,
    XenstoreConnectionError,
    XenstorePermissionError,
)

QUIRKS = {"zero-watch-ids": {"zero_watch_ids": True},
          "foreign-req-ids": {"foreign_req_ids": True},
          "events-first": {"events_first": True, "hold": 0.05}}


class Rig(object):
    """Two loop filesystems (ext4, xfs) as the VM's two disks, dom0, and the daemon."""

    def __init__(self, xenstored, loopfs, write_config, emulator_factory, tmp_path):
        self.xenstored = xenstored
        self.filesystems = [loopfs("ext4"), loopfs("xfs")]
        self.mounts = [fs.mount_point for fs in self.filesystems]
        self.vdis = [str(uuid.uuid4()) for _ in self.filesystems]
        self.images = {vdi: fs.image for vdi, fs in zip(self.vdis, self.filesystems)}
        self.write_config = write_config
        self.emulator_factory = emulator_factory
        self.tmp_path = tmp_path
        self.probes = []
        self.sim = self.daemon = self.emulator = None
        self.client = XenstoreClient(xenstored.uri, timeout=3.0)

    # -- dom0 ---------------------------------------------------------------------

    def probe(self):
        """In the snapshot callback: are all the VM's filesystems frozen right now?"""
        self.probes.append([is_frozen(point) for point in self.mounts])

    def quick_snapshot(self, vdis, whole_vm):
        self.probe()
        return SnapshotResult(str(uuid.uuid4()), {vdi: str(uuid.uuid4()) for vdi in vdis})

    def start(self, failure=None, take=None, vm_disks=None, max_frozen=4, quirks=None,
              snapshot_timeout=5.0, env=None):
        self.sim = FaultyDom0Sim(self.xenstored.uri, self.vdis, take or self.quick_snapshot,
                                 failure=failure, vm_disks=vm_disks,
                                 snapshot_timeout=snapshot_timeout).start()
        self.client.connect()
        self.home, self.vss = self.sim.home, self.sim.vss
        self.control = self.home + "/control/snapshot"
        config = self.write_config(self.mounts, max_frozen=max_frozen,
                                   extra="[xenstore]\nrequest-timeout = 2")
        if quirks is None:
            args = ["--xenstore", self.xenstored.uri, "--domain-path", self.home]
        else:
            self.emulator = self.emulator_factory(home=self.home, **quirks)
            args = ["--xenstore", "xenbus:" + self.emulator.path]
        self.guestd = GuestDaemon(config, args, str(self.tmp_path / "daemon.log"), env).start()
        self.daemon = self.guestd.process
        self.wait_state("idle")
        assert self.client.read(self.home + "/control/feature-quiesce") == "1"
        return self

    def read(self, key, default=None):
        return self.client.read_or(self.home + "/" + key, default)

    def wait_state(self, state, timeout=10.0):
        self.guestd.wait_for(lambda: self.read("data/xe-quiesce/state") == state,
                             "daemon state " + state, timeout)

    def log(self):
        return self.guestd.log()

    def snapshot(self, **kwargs):
        kwargs.setdefault("status_timeout", 30.0)
        return self.sim.snapshot_with_quiesce(**kwargs)

    def snapshot_error(self):
        """A request that must fail: the XapiError, after the daemon is idle again."""
        with pytest.raises(XapiError) as caught:
            self.snapshot()
        self.wait_state("idle")
        return caught.value

    def frozen_now(self):
        return [is_frozen(point) for point in self.mounts]

    def last_session(self):
        path = os.path.join(str(self.tmp_path / "run"), "last.json")
        if not os.path.exists(path):
            return None
        with open(path) as handle:
            return json.load(handle).get("xapi")

    def stop(self):
        if self.daemon is not None:
            self.guestd.stop()
        if self.sim is not None:
            self.sim.stop()
        self.client.close()


@pytest.fixture
def rig(xenstored, loopfs, write_config, xenbus_emulator, tmp_path):
    made = Rig(xenstored, loopfs, write_config, xenbus_emulator, tmp_path)
    yield made
    made.stop()


@pytest.fixture
def rig_ocaml(oxenstored, loopfs, write_config, tmp_path):
    """The same rig on oxenstored, the daemon XenServer and XCP-ng run."""
    made = Rig(oxenstored, loopfs, write_config, None, tmp_path)
    yield made
    made.stop()


def guest_sequence(rig):
    """What the guest, xapi and snapwatchd changed under C, V and the agent's state."""
    keep = (rig.control, rig.vss, rig.home + "/data/xe-quiesce/state")
    return [(role, op, path.replace(rig.control, "C").replace(rig.vss, "V"), value)
            for role, op, path, value in xstrace.by_role(rig.xenstored.trace_path,
                                                         rig.home, rig.vss)
            if path.startswith(keep) and role in ("guest", "xapi", "snapwatchd")]


def v_cleanup():
    return [("guest", "rm", "V/" + key, None)
            for key in ("snapshot", "snapinfo", "snapuuid", "snaptype", "status")]


def state(value):
    return ("guest", "write", "/data/xe-quiesce/state", value)


# -- the success path ----------------------------------------------------------------

def test_success_path_keys_values_order_and_freeze_window(rig):
    rig.start(take=copy_images(rig.images, before=rig.probe))
    result = rig.snapshot()
    assert rig.probes == [[True, True]]          # frozen while the host snapshots
    assert rig.frozen_now() == [False, False]    # thawed once xapi has its answer
    rig.wait_state("idle")
    v1, v2 = rig.vdis
    seq = [(role, op, path.replace(rig.home, ""), value) for role, op, path, value in
           guest_sequence(rig)]
    [snapinfo] = [s[3] for s in seq if s[1:3] == ("write", "V/snapinfo")]
    assert re.match(r"^<VM.snapshot><time>\S+</time><snapuuid>{}</snapuuid><parent>{}</parent>"
                    r"</VM.snapshot>$".format(result.snapuuid, rig.sim.vm_uuid), snapinfo)
    snapids = [s for s in seq if s[2].startswith("C/snapid/")]
    ids = [s for s in seq if s[2].endswith("/id")]
    # After C/status xapi removes C while the guest cleans V up: two parties, any order.
    end = seq.index(("guest", "write", "C/status", "snapshot-created")) + 1
    tail = seq[end:]
    assert [s for s in tail if s[0] == "guest"] == v_cleanup() + [state("idle")]
    assert [s for s in tail if s[0] != "guest"] == [("xapi", "rm", "C", None)]
    assert seq[:end] == (
        [state("idle"),
         ("xapi", "rm", "C", None), ("xapi", "write", "C/action", "create-snapshot"),
         ("guest", "rm", "C/action", None), state("quiescing")]
        + v_cleanup()
        + [("guest", "write", "V/snapshot/" + v1, ""), ("guest", "write", "V/snapshot/" + v2, ""),
           state("frozen"),
           ("guest", "write", "V/status", "create-snapshots"),
           ("snapwatchd", "rm", "V/snapstring", None),
           ("snapwatchd", "write", "V/snaptype", "vm")] + ids
        + [("snapwatchd", "write", "V/snapinfo", snapinfo),
           ("snapwatchd", "write", "V/snapuuid", result.snapuuid),
           ("snapwatchd", "write", "V/status", "snapshots-created"),
           state("thawing"),
           ("guest", "write", "C/snapuuid", result.snapuuid), ("guest", "rm", "C/snapid", None)]
        + snapids + [("guest", "write", "C/status", "snapshot-created")])
    assert [s[2] for s in ids] == ["V/snapshot/{}/id".format(v) for v in (v1, v2)]
    assert [s[2] for s in snapids] == ["C/snapid/{}".format(n) for n in range(len(snapids))]
    assert all(len(s[3]) <= 1020 for s in snapids)
    manifest = json.loads(result.snapid)
    assert sorted(manifest["frozen"]) == sorted(rig.mounts)
    assert manifest["vdis"] == {"51712": v1, "51728": v2}
    assert manifest["window_seconds"] > 0
    assert rig.last_session()["result"] == "thawed"
    for vdi in rig.vdis:
        assert os.path.getsize(rig.images[vdi] + ".snapshot") > 0


def test_success_and_garbage_on_oxenstored(rig_ocaml):
    rig = rig_ocaml
    rig.start()
    result = rig.snapshot()
    assert rig.probes == [[True, True]] and rig.frozen_now() == [False, False]
    assert json.loads(result.snapid)["vdis"] == {"51712": rig.vdis[0], "51728": rig.vdis[1]}
    rig.wait_state("idle")
    plant(rig, *GARBAGE["vss-bytes"][:2])
    assert "not text" in rig.snapshot_error().params[1] and len(rig.probes) == 1


def test_action_is_acknowledged_within_one_second(rig):
    rig.start()
    started = time.monotonic()
    rig.client.write(rig.control + "/action", "create-snapshot")
    wait_until(lambda: not rig.client.exists(rig.control + "/action"), 1.0, "ack")
    assert time.monotonic() - started < 1.0
    wait_until(lambda: rig.client.read_or(rig.control + "/status"), 10, "status")
    assert rig.client.read(rig.control + "/status") == "snapshot-created"


# -- snapwatchd's failures --------------------------------------------------------------

@pytest.mark.parametrize("failure", ["F11", "F13"])
def test_snapwatchd_silent_thaws_at_the_deadline_and_reports_error(rig, failure):
    rig.start(failure=failure, max_frozen=3)
    started = time.monotonic()
    error = rig.snapshot_error()
    assert 2.5 < time.monotonic() - started < 10
    assert error.code == FAILED and "deadline" in error.params[1]
    assert rig.frozen_now() == [False, False]
    assert rig.last_session()["result"] in ("thawed", "deadline-thawed")


@pytest.mark.parametrize("failure", ["F8", "F9", "F10"])
def test_snapshots_failed_is_reported_as_snapshot_error(rig, failure):
    rig.start(failure=failure)
    error = rig.snapshot_error()
    assert error.code == FAILED and "snapshots-failed" in error.params[1]
    assert rig.frozen_now() == [False, False]
    assert rig.client.read_or(rig.vss + "/status") is None  # V cleaned up


def test_per_disk_mode_is_refused(rig):  # F7: xapi knows a third disk the guest lacks
    rig.start(vm_disks=rig.vdis + [str(uuid.uuid4())])
    error = rig.snapshot_error()
    assert error.code == FAILED and "per-disk" in error.params[1]


def test_slow_snapshot_is_snapshots_failed(rig):  # F8 for real: beyond snapwatchd's budget
    rig.start(take=lambda vdis, whole: time.sleep(3), snapshot_timeout=1.0)
    assert "snapshots-failed" in rig.snapshot_error().params[1]


# -- requests that arrive twice -----------------------------------------------------------

def test_action_written_twice_at_once_makes_one_session(rig):
    """Both writes land before the agent looks (it is stopped meanwhile): one session.
    (A write after the agent took the first is the busy case, tested below.)"""
    rig.start()
    rig.daemon.send_signal(signal.SIGSTOP)
    try:
        rig.client.write(rig.control + "/action", "create-snapshot")
        rig.client.write(rig.control + "/action", "create-snapshot")
    finally:
        rig.daemon.send_signal(signal.SIGCONT)
    wait_until(lambda: rig.client.read_or(rig.control + "/status"), 10, "status")
    rig.wait_state("idle")
    assert rig.client.read(rig.control + "/status") == "snapshot-created"
    assert len(rig.probes) == 1
    assert rig.log().count("quiesce requested by the host") == 1


def test_action_written_again_while_frozen_is_answered_busy(rig):
    def take(vdis, whole_vm):
        rig.probe()
        with XenstoreClient(rig.xenstored.uri, timeout=3.0) as other:
            other.write(rig.control + "/action", "create-snapshot")
            # acknowledged and answered at once (xapi then removes C, status included)
            wait_until(lambda: not other.exists(rig.control + "/action"), 5, "busy answer")
        return rig.quick_snapshot(vdis, whole_vm)

    rig.start(take=take)
    error = rig.snapshot_error()
    assert error.code == FAILED and error.params[1].startswith("busy")
    assert rig.probes[0] == [True, True] and rig.frozen_now() == [False, False]
    assert "not reported" in rig.log()
    assert rig.last_session()["result"] == "thawed"


def test_unknown_action_is_logged_and_left_alone(rig):
    rig.start()
    rig.client.write(rig.control + "/action", "create-snapshotinfo")
    wait_until(lambda: "unknown" in rig.log(), 5, "the log line")
    assert rig.client.read(rig.control + "/action") == "create-snapshotinfo"
    assert rig.read("data/xe-quiesce/state") == "idle"


# -- garbage from dom0 ------------------------------------------------------------------

GARBAGE = {
    "vss-missing": ("vss", None, "vss is missing"),
    "vss-not-a-vss-path": ("vss", b"/local/domain/0", "/vss/<vm-uuid>"),
    "vss-bytes": ("vss", b"\xff\xfe/vss", "not text"),
    "device-type": ("device/vbd/51712/device-type", b"floppy", "expected disk or cdrom"),
    "backend-missing": ("device/vbd/51712/backend", None, "backend is missing"),
    "backend-garbage": ("device/vbd/51712/backend", b"not a path!", "not a xenstore path"),
    "vdi-missing": ("@backend/sm-data/vdi-uuid", None, "vdi-uuid is missing"),
    "vdi-garbage": ("@backend/sm-data/vdi-uuid", b"12345", "not a uuid"),
    "vdi-bytes": ("@backend/sm-data/vdi-uuid", b"\x80\x81", "not text"),
}


def plant(rig, key, value):
    if key.startswith("@backend"):
        path = rig.read("device/vbd/51712/backend") + key[len("@backend"):]
    else:
        path = rig.home + "/" + key
    if value is None:
        rig.client.rm(path)
    else:
        rig.client.write_bytes(path, value)


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_is_a_clear_error_nothing_frozen_daemon_alive(rig, name):
    key, value, text = GARBAGE[name]
    rig.start()
    plant(rig, key, value)
    error = rig.snapshot_error()
    assert error.code == FAILED and text in error.params[1]
    assert text in rig.log()
    assert rig.probes == [] and rig.last_session() is None  # no session ever started
    assert rig.daemon.poll() is None


# -- xenstored restarts, stop, systemd ----------------------------------------------------

def connected(client):
    try:
        client.connect()
    except XenstoreConnectionError:
        return False
    return True


def test_xenstored_killed_and_restarted_mid_session(rig):
    done = threading.Event()

    def take(vdis, whole_vm):
        rig.probe()
        rig.xenstored.kill()
        rig.xenstored.restart()  # an empty store: the request is gone
        other = XenstoreClient(rig.xenstored.uri, timeout=3.0)
        # every client reconnects at once: the first connect may find the backlog full
        wait_until(lambda: connected(other), 5, "a connection to the new xenstored")
        try:
            wait_until(lambda: other.read_or(rig.home + "/data/xe-quiesce/state") == "idle",
                       10, "the guest to give up")
        finally:
            other.close()
        done.set()
        raise RuntimeError("the host lost its xenstore")

    rig.start(take=take, snapshot_timeout=20.0)
    outcome = {}

    def xapi():
        try:
            rig.snapshot(status_timeout=10.0)
        except XapiError as error:
            outcome["error"] = error
    caller = threading.Thread(target=xapi)
    caller.start()
    # advertised again in the new store
    wait_until(lambda: rig.read("control/feature-quiesce") == "1", 15, "re-advertisement")
    rig.wait_state("idle")
    caller.join(15)
    assert done.wait(10)
    assert rig.probes == [[True, True]] and rig.frozen_now() == [False, False]
    assert rig.read("data/xe-quiesce/version")
    assert "reconnected" in rig.log() and "vanished" in rig.log()
    assert rig.daemon.poll() is None
    assert "error" in outcome


def test_sigterm_while_frozen_thaws_reports_and_exits(rig):
    def take(vdis, whole_vm):
        rig.probe()
        rig.daemon.send_signal(signal.SIGTERM)
        assert rig.daemon.wait(10) == 0
        raise RuntimeError("the guest went away")

    rig.start(take=take)
    with pytest.raises(XapiError) as caught:
        rig.snapshot()
    assert "stopped" in caught.value.params[1]
    # The host has its answer before the daemon unadvertises and exits (take waits for
    # the exit in the snapshot thread, not here).
    assert rig.daemon.wait(10) == 0
    assert rig.probes == [[True, True]] and rig.frozen_now() == [False, False]
    assert rig.read("control/feature-quiesce") == "0"
    assert rig.read("data/xe-quiesce/state") is None


def test_systemd_ready_and_watchdog(rig, tmp_path):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        rig.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
        messages = [sock.recv(100).decode() for _ in range(4)]
    finally:
        sock.close()
    assert "READY=1" in messages and messages.count("WATCHDOG=1") >= 2


# -- the same scenarios over the xenbus emulator, one quirk at a time ---------------------

@pytest.mark.parametrize("quirk", sorted(QUIRKS))
def test_emulator_success_and_garbage(rig, quirk):
    rig.start(quirks=QUIRKS[quirk])
    result = rig.snapshot()
    assert rig.probes == [[True, True]] and rig.frozen_now() == [False, False]
    assert json.loads(result.snapid)["vdis"]["51712"] == rig.vdis[0]
    rig.wait_state("idle")
    plant(rig, *GARBAGE["vdi-garbage"][:2])
    assert "not a uuid" in rig.snapshot_error().params[1]
    assert len(rig.probes) == 1


@pytest.mark.parametrize("quirk", sorted(QUIRKS))
def test_emulator_silent_snapwatchd_and_busy(rig, quirk):
    rig.start(quirks=QUIRKS[quirk], failure="F13", max_frozen=2)
    assert "deadline" in rig.snapshot_error().params[1]
    assert rig.frozen_now() == [False, False]
    rig.sim.stop_snapwatchd()
    rig.sim.failure = "F8"
    rig.sim.start_snapwatchd()
    assert "snapshots-failed" in rig.snapshot_error().params[1]


@pytest.mark.parametrize("quirk", sorted(QUIRKS))
def test_emulator_drop_mid_session_reconnects_and_still_succeeds(rig, quirk):
    def take(vdis, whole_vm):
        # Hang up once the guest waits in its watch (not while a reply of its is held
        # back: a re-sent write would then race with this answer). The store survives,
        # so the conversation can go on.
        time.sleep(0.3)
        opened = rig.emulator.sessions_opened
        rig.emulator.drop()
        wait_until(lambda: rig.emulator.sessions_opened > opened, 5, "the reconnect")
        return rig.quick_snapshot(vdis, whole_vm)

    rig.start(quirks=QUIRKS[quirk], take=take, max_frozen=8)
    rig.client.rm(rig.home + "/control/feature-quiesce")  # shows the re-advertisement
    wait_until(lambda: rig.read("control/feature-quiesce") == "1", 5, "advertised")
    result = rig.snapshot()
    assert result.snapuuid and rig.probes == [[True, True]]
    assert rig.frozen_now() == [False, False]
    assert "reconnected" in rig.log()


def test_resume_or_migration_advertises_again(rig):
    rig.start()
    rig.client.rm(rig.home + "/data/xe-quiesce/version")
    rig.client.write(rig.home + "/unique-domain-id", str(uuid.uuid4()))  # a new domain
    wait_until(lambda: rig.read("data/xe-quiesce/version"), 5, "re-advertisement")
    assert rig.read("control/feature-quiesce") == "1" and rig.read("data/updated")


class RefusingControl(XenstoreClient):
    """xenstored as plain xl sets it up: control/ read-only to the guest (EACCES).

    A dom0 socket connection bypasses permissions, so the refusal is injected here;
    every other request goes to the real xenstored.
    """

    def write(self, path, value):
        if "/control/feature-" in path:
            raise XenstorePermissionError("xenstore WRITE {}: EACCES".format(path), "EACCES")
        return XenstoreClient.write(self, path, value)


def test_advertisement_refused_is_logged_not_fatal(xenstored, config_for, loopfs, caplog):
    fs = loopfs("ext4")
    home = "/local/domain/12"
    config = config_for([fs.mount_point])
    agent = XapiTrigger(config, RefusingControl(xenstored.uri, timeout=2.0),
                        SessionSlot(config, functools.partial(QuiesceSession, config)), home)
    logger = logging.getLogger("xe_quiesce")
    propagate, logger.propagate = logger.propagate, True  # the CLI's gate may own it
    with caplog.at_level(logging.DEBUG, logger="xe_quiesce"):
        try:
            agent.start()
            agent.advertise()
        finally:
            logger.propagate = propagate
            agent.stop()
    assert agent.running
    with XenstoreClient(xenstored.uri) as client:
        assert client.read(home + "/data/xe-quiesce/state") == "idle"
        assert client.read(home + "/data/xe-quiesce/version")
        assert not client.exists(home + "/control/feature-quiesce")
    # pytest may capture one record twice (through the package logger and root): dedupe.
    records = list({id(r): r for r in caplog.records}.values())
    refusals = [r for r in records if "will not ask this guest" in r.getMessage()]
    levels = [r.levelno for r in refusals]  # said once, then quiet on each retry
    assert levels[0] == logging.WARNING and levels[1:] and set(levels[1:]) == {logging.DEBUG}


def test_killed_mid_request_the_restarted_agent_clears_v_and_answers_the_host(rig):
    """SIGKILL while frozen: the guard thaws at once; the restarted daemon (as
    Restart=on-failure does) finds the request in its journal, removes the stale
    V/status=create-snapshots a returning snapwatchd would act on, and answers XAPI."""
    rig.start(failure="F11", max_frozen=20)
    outcome = []

    def xapi():
        try:
            rig.snapshot(status_timeout=30.0)
        except XapiError as error:
            outcome.append(error)

    caller = threading.Thread(target=xapi)
    caller.start()
    wait_until(lambda: rig.client.read_or(rig.vss + "/status") == "create-snapshots", 10,
               "create-snapshots")
    assert rig.frozen_now() == [True, True]
    rig.daemon.send_signal(signal.SIGKILL)
    rig.daemon.wait()
    wait_until(lambda: rig.frozen_now() == [False, False], 3, "the guard's thaw")
    argv = rig.guestd.argv
    rig.guestd = GuestDaemon(argv[6], argv[7:], str(rig.tmp_path / "daemon2.log")).start()
    rig.daemon = rig.guestd.process
    caller.join(15)
    assert outcome and outcome[0].code == FAILED and "restarted" in outcome[0].params[1]
    assert rig.client.read_or(rig.vss + "/status") is None
    rig.wait_state("idle")
    assert "cut off by the agent's restart" in rig.log()
