"""XenstoreClient against a real xenstored, directly and through the xenbus emulator.

The emulator tests run every scenario with each kernel quirk switched on, and the
pyxs tests show the quirks are real: plain pyxs 0.4.1 hangs on them.
"""
import contextlib
import copy
import os
import socket
import threading
import time

import pytest
import pyxs
from pyxs._internal import Op
from pyxs.client import Monitor
from pyxs.exceptions import PyXSError

from testbed.waiting import wait_until
from tests.rig.xenbus_emulator import HEADER
from xe_quiesce.xenstore import (
    XenstoreClient,
    XenstoreConnectionError,
    XenstoreError,
    XenstoreNotFound,
    XenstoreTimeout,
    XenstoreValueError,
)

WATCH, UNWATCH, WATCH_EVENT = 4, 5, 15
MADE_UP = (WATCH, UNWATCH)  # replies the kernel makes up instead of forwarding
# pyxs's router thread dying is the point of those tests, not a surprise.
router_dies = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture
def client(xenstored):
    with XenstoreClient(xenstored.uri, timeout=2.0) as c:
        yield c


def until(c, event, timeout=2.0):
    """Consume events until ``event`` comes (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.wait_event(deadline - time.monotonic()) == event:
            return True
    return False


def exercise_api(c, base):
    """Every node call once; shared by the socket and the emulator scenarios."""
    c.write(f"{base}/a", "hello")
    c.write(f"{base}/empty", "")
    c.mkdir(f"{base}/dir")
    assert c.read(f"{base}/a") == "hello"
    assert c.read(f"{base}/empty") == ""
    assert c.read(f"{base}/dir") == ""
    assert sorted(c.ls(base)) == ["a", "dir", "empty"]
    assert c.exists(f"{base}/a") and not c.exists(f"{base}/nope")
    assert c.read_or(f"{base}/nope", "dflt") == "dflt"
    with pytest.raises(XenstoreNotFound):
        c.read(f"{base}/nope")
    c.set_perms(f"{base}/a", ["n5", "r0"])
    assert c.get_perms(f"{base}/a") == ["n5", "r0"]
    assert c.get_domain_path(5) == "/local/domain/5"
    c.rm(f"{base}/a")
    c.rm(f"{base}/a")  # ENOENT is ignored
    assert not c.exists(f"{base}/a")
    assert c.ls(f"{base}/dir") == []


def exercise_watch(c, base):
    c.write(f"{base}/w", "0")
    c.watch(f"{base}/w", "tok")
    assert until(c, (f"{base}/w", "tok"))  # fired once at registration
    c.write(f"{base}/w/child", "1")
    assert c.wait_event(2) == (f"{base}/w/child", "tok")
    c.unwatch(f"{base}/w", "tok")
    c.write(f"{base}/w", "2")
    assert c.wait_event(0.3) is None


QUIRKS = {
    "plain": {},
    "zero-watch-ids": {"zero_watch_ids": True},
    "foreign-req-ids": {"foreign_req_ids": True},
    "events-first": {"events_first": True},
    "all": {"zero_watch_ids": True, "foreign_req_ids": True, "events_first": True},
}




class Transport(object):
    """How a test reaches its xenstored: the unix socket, or the pty xenbus emulator with
    one set of the Linux device's quirks (then `emulator` says which)."""

    def __init__(self, uri, emulator=None):
        self.uri = uri
        self.emulator = emulator

    def client(self, timeout=2.0):
        c = XenstoreClient(self.uri, timeout=timeout)
        c.connect()
        return c


@pytest.fixture(params=["unix-socket"] + ["xenbus-" + name for name in QUIRKS])
def transport(request, xenstored, xenbus_emulator):
    if request.param == "unix-socket":
        return Transport(xenstored.uri)
    emulator = xenbus_emulator(**QUIRKS[request.param[len("xenbus-"):]])
    return Transport("xenbus:" + emulator.path, emulator)


# -- every transport --------------------------------------------------------------------

def test_api_and_watch(transport):
    c = transport.client()
    exercise_api(c, "/t")
    exercise_watch(c, "/t")
    c.close()
    emulator = transport.emulator
    if emulator is None:
        return
    assert emulator.overlapped == 0, "a request written before the last one was answered"
    sent = emulator.sent
    if emulator.zero_watch_ids:
        assert (WATCH, 0, 0) in sent
    if emulator.foreign_req_ids:
        assert all(rq_id >= 0x10000 for op, rq_id, _tx in sent if op not in MADE_UP)
    if emulator.events_first:  # the initial event overtook the WATCH reply
        ops = [op for op, _rq, _tx in sent]
        assert ops[ops.index(WATCH) - 1] == WATCH_EVENT


def test_timeout_when_xenstored_stops_answering(transport, xenstored):
    c = transport.client(timeout=0.5)
    c.write("/t", "1")
    xenstored.pause()
    try:
        start = time.monotonic()
        with pytest.raises(XenstoreTimeout):
            c.read("/t")
        assert time.monotonic() - start < 1.0
        start = time.monotonic()
        assert c.wait_event(0.3) is None  # must not hang either
        assert time.monotonic() - start < 1.0
    finally:
        xenstored.resume()
    assert c.read("/t") == "1"  # a fresh connection: no late reply is mistaken
    c.close()


def test_xenstored_restart_reconnects_and_rewatches(transport, xenstored):
    c = transport.client(timeout=3.0)
    reconnects = []
    c.on_reconnect = lambda: (reconnects.append(1), c.write("/w/adv", "1"))
    c.write("/w", "0")
    c.watch("/w", "tok")
    assert until(c, ("/w", "tok"))
    xenstored.kill()
    xenstored.restart()  # same socket path, empty store
    # The client notices while waiting, reconnects, re-registers its watch, then
    # on_reconnect advertises again (through the client) and the watch sees it.
    assert until(c, ("/w/adv", "tok"))
    assert reconnects == [1]
    assert c.read("/w/adv") == "1"
    assert c.read_or("/w/x") is None  # the new store is empty
    c.write("/w", "again")
    assert c.wait_event(2) == ("/w", "tok")
    c.close()


# -- the real C xenstored over its unix socket ----------------------------------

@pytest.mark.parametrize("uri", ["", "tcp:1.2.3.4", "unix:", "xenbus:", "foo", None])
def test_bad_uri_is_refused_clearly(uri):
    with pytest.raises(XenstoreValueError, match="unknown xenstore URI"):
        XenstoreClient(uri)


def test_default_xenbus_uri_reports_missing_device(monkeypatch, tmp_path):
    monkeypatch.setattr("xe_quiesce.xenstore.XENBUS_DEVICES", (str(tmp_path / "none"),))
    start = time.monotonic()
    with pytest.raises(XenstoreConnectionError, match="no xenbus device"):
        XenstoreClient().connect()
    assert time.monotonic() - start < 1.0  # not retried for the 10 s timeout


def test_relative_paths_resolve_against_dom0_home(client):
    client.write("data/x", "1")
    assert client.read("/local/domain/0/data/x") == "1"


def test_empty_value_works_although_pyxs_refuses_it(client, xenstored):
    with pyxs.Client(unix_socket_path=xenstored.socket_path) as plain:
        with pytest.raises(ValueError):
            plain.write(b"/e", b"")
    client.write("/e", "")
    assert client.read_bytes("/e") == b""


@pytest.mark.parametrize("value", ["caf\u00e9", "a\nb", "tab\there", "nul\x00", "del\x7f"])
def test_unprintable_value_is_refused_before_sending(client, value):
    with pytest.raises(XenstoreValueError, match="/v"):
        client.write("/v", value)
    assert not client.exists("/v")  # nothing was written, the connection is fine


@pytest.mark.parametrize("path", ["a//b", "/a/", "sp ace", "caf\u00e9", ""])
def test_invalid_path_is_refused(client, path):
    with pytest.raises(XenstoreValueError, match="path"):
        client.read(path)


def test_invalid_permission_is_refused(client):
    client.write("/p", "1")
    with pytest.raises(XenstoreValueError, match="permissions"):
        client.set_perms("/p", ["x5"])


def test_value_not_utf8_is_a_clear_error(client):
    client.write_bytes("/g", b"\xff\xfe garbage")
    with pytest.raises(XenstoreValueError, match="/g is not text"):
        client.read("/g")
    assert client.read_bytes("/g") == b"\xff\xfe garbage"
    client.write_bytes("/u", "caf\u00e9".encode())
    assert client.read("/u") == "caf\u00e9"


def test_oversized_request_is_refused(client):
    with pytest.raises(XenstoreValueError, match="4096"):
        client.write("/big", "x" * 5000)


def test_xenstore_errors_carry_their_code(client):
    client.write("/f", "1")
    with pytest.raises(XenstoreError) as info:
        client.mkdir("/f/../x")  # refused by the path check before sending
    assert isinstance(info.value, XenstoreValueError)
    with pytest.raises(XenstoreError) as info:
        client.set_perms("/missing", ["n0"])
    assert info.value.code == "ENOENT"


def test_request_during_outage_waits_for_xenstored(xenstored):
    c = XenstoreClient(xenstored.uri, timeout=3.0)
    c.connect()
    xenstored.kill()
    timer = threading.Timer(0.5, xenstored.restart)
    timer.start()
    try:
        c.write("/back", "1")  # retried with back-off until the daemon is back
    finally:
        timer.join()
    assert c.read("/back") == "1"
    c.close()


@contextlib.contextmanager
def full_backlog(xenstored):
    """xenstored stopped with its listen backlog full, as when every client of a
    restarted daemon reconnects at once: a non-blocking connect gets EAGAIN."""
    xenstored.pause()
    queued = []
    try:
        for _ in range(64):  # C xenstored listens with a backlog of 1
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            queued.append(sock)
            try:
                sock.connect(xenstored.socket_path)
            except BlockingIOError:
                break
        else:
            raise AssertionError("xenstored's listen backlog never filled")
        yield
    finally:
        for sock in queued:
            sock.close()
        xenstored.resume()


def test_first_connect_waits_while_the_backlog_is_full(xenstored):
    c = XenstoreClient(xenstored.uri, timeout=3.0)
    with full_backlog(xenstored):
        # Resumed, xenstored accepts the queued connections and frees the backlog.
        timer = threading.Timer(0.5, xenstored.resume)
        timer.start()
        start = time.monotonic()
        try:
            c.connect()
        finally:
            timer.join()
        assert time.monotonic() - start >= 0.4  # it did meet the full backlog
    c.write("/first", "1")
    assert c.read("/first") == "1"
    c.close()


def test_first_connect_gives_up_clearly_within_the_timeout(xenstored):
    c = XenstoreClient(xenstored.uri, timeout=0.5)
    with full_backlog(xenstored):
        start = time.monotonic()
        with pytest.raises(XenstoreConnectionError,
                           match=r"gave up after 0\.\d s.*listen backlog full"):
            c.connect()
        assert 0.45 <= time.monotonic() - start < 1.5
    assert not c.connected


def test_reconnect_gives_up_within_the_timeout(xenstored):
    c = XenstoreClient(xenstored.uri, timeout=0.5)
    c.connect()
    xenstored.kill()
    start = time.monotonic()
    with pytest.raises(XenstoreConnectionError):
        c.read("/x")
    assert time.monotonic() - start < 1.5
    assert c.wait_event(0.2) is None
    assert not c.connected


# -- through the xenbus emulator, with each kernel quirk ---------------------------

@pytest.fixture(params=list(QUIRKS), ids=list(QUIRKS))
def emulator(request, xenbus_emulator):
    return xenbus_emulator(**QUIRKS[request.param])


def bus_client(emulator, timeout=2.0):
    c = XenstoreClient("xenbus:" + emulator.path, timeout=timeout)
    c.connect()
    return c


def watching_client(emulator, timeout=2.0):
    """A client watching /bus/w (its first event consumed) and the list its reconnects
    append to."""
    c = bus_client(emulator, timeout)
    reconnects = []
    c.on_reconnect = lambda: reconnects.append(1)
    c.write("/bus/w", "0")
    c.watch("/bus/w", "tok")
    assert until(c, ("/bus/w", "tok"))
    return c, reconnects


def test_drop_over_xenbus_reconnects_and_rewatches(emulator):
    c, reconnects = watching_client(emulator)
    emulator.drop()
    assert c.wait_event(2) == ("/bus/w", "tok")  # re-registration fires
    assert reconnects == [1] and emulator.sessions_opened == 2
    c.write("/bus/w", "1")
    assert c.wait_event(2) == ("/bus/w", "tok")
    emulator.drop()
    assert c.read("/bus/w") == "1"  # a request notices the drop too
    assert reconnects == [1, 1]
    c.close()


def in_background(call):
    """Start call in a thread; the returned dict gets "result" or "error"."""
    outcome = {}

    def run():
        try:
            outcome["result"] = call()
        except Exception as exc:  # handed to the test thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    outcome["thread"] = worker
    return outcome


# The guest's request, and what xenstored holds once it was applied.
NOT_IDEMPOTENT = {
    "write": (lambda c: c.write("/V/status", "create-snapshots"), "create-snapshots"),
    "rm": (lambda c: c.rm("/V/status"), None),
}


@pytest.mark.parametrize("op", list(NOT_IDEMPOTENT))
def test_request_applied_before_a_drop_is_not_resent(xenbus_emulator, xenstored, op):
    """The incident: the guest's V/status write re-sent after dom0 had written
    snapshots-created over it. Replies are held 1 s so the drop lands between
    xenstored applying the request and the guest seeing the reply."""
    call, applied = NOT_IDEMPOTENT[op]
    emulator = xenbus_emulator(events_first=True, hold=1.0)
    guest = bus_client(emulator, timeout=5.0)
    with XenstoreClient(xenstored.uri, timeout=2.0) as dom0:
        dom0.write("/V/status", "idle")
        pending = in_background(lambda: call(guest))
        wait_until(lambda: dom0.read_or("/V/status") == applied, 5.0, "the request applied")
        dom0.write("/V/status", "snapshots-created")
        emulator.drop()
        pending["thread"].join(5)
        error = pending.get("error")
        assert isinstance(error, XenstoreConnectionError), pending
        assert "outcome is unknown" in str(error)
        assert dom0.read("/V/status") == "snapshots-created"  # not overwritten
    assert guest.read("/V/status") == "snapshots-created"  # the next call reconnects
    assert emulator.sessions_opened == 2
    guest.close()


def test_read_in_flight_at_a_drop_is_resent(xenbus_emulator, xenstored):
    emulator = xenbus_emulator(events_first=True, hold=1.0)
    guest = bus_client(emulator, timeout=5.0)
    with XenstoreClient(xenstored.uri) as dom0:
        dom0.write("/V/r", "1")

    def reads():
        with open(xenstored.trace_path) as trace:
            return trace.read().count("READ (/V/r )")

    pending = in_background(lambda: guest.read("/V/r"))
    wait_until(lambda: reads() == 1, 5.0, "xenstored to get the READ")
    emulator.drop()
    pending["thread"].join(5)
    assert pending.get("result") == "1", pending
    assert reads() == 2
    guest.close()


def test_the_emulator_sees_a_request_sent_before_the_last_reply(xenbus_emulator):
    """The check test_api_and_watch relies on: two requests written back to back (what
    the real device mangles) are counted."""
    emulator = xenbus_emulator()
    fd = os.open(emulator.path, os.O_RDWR | os.O_NOCTTY)
    try:
        for rq_id in (1, 2):
            os.write(fd, HEADER.pack(Op.READ, rq_id, 0, 2) + b"/\0")
        wait_until(lambda: emulator.overlapped == 1, 5, "the second request seen")
    finally:
        os.close(fd)


def test_write_not_sent_before_a_drop_is_sent_after_reconnecting(xenbus_emulator):
    emulator = xenbus_emulator()
    c = bus_client(emulator)
    c.write("/bus/s", "0")
    emulator.drop()  # unnoticed: the WRITE fails on the dead device before a byte goes
    c.write("/bus/s", "1")
    assert emulator.sessions_opened == 2
    assert c.read("/bus/s") == "1"
    c.close()


def test_rewatch_has_its_own_budget_not_the_waits(xenbus_emulator):
    """Every reply takes 0.3 s; waits of 0.1 s must still re-register the watch
    (before: each wait timed re-registration out, dropped and reconnected again)."""
    emulator = xenbus_emulator(events_first=True, hold=0.3)
    c, reconnects = watching_client(emulator, timeout=3.0)
    emulator.drop()
    for _ in range(5):
        c.wait_event(0.1)
    assert reconnects == [1] and emulator.sessions_opened == 2 and c.connected
    c.write("/bus/w", "1")
    assert until(c, ("/bus/w", "tok"))
    c.close()


def test_failed_rewatch_leaves_the_client_disconnected(xenbus_emulator, xenstored):
    emulator = xenbus_emulator()
    c, reconnects = watching_client(emulator, timeout=0.5)
    xenstored.pause()
    try:
        emulator.drop()
        start = time.monotonic()
        assert c.wait_event(0.1) is None
        # Re-registration had the client's 0.5 s, not what was left of the 0.1 s.
        assert 0.45 <= time.monotonic() - start < 1.5
        assert not c.connected and reconnects == []
        with pytest.raises(XenstoreConnectionError, match="re-registering 1 watch"):
            c.read("/bus/w")
    finally:
        xenstored.resume()
    # The watch was kept: the next call re-registers it, and it fires.
    assert until(c, ("/bus/w", "tok"))
    assert reconnects == [1]
    c.write("/bus/w", "1")
    assert until(c, ("/bus/w", "tok"))
    c.close()


def test_guest_view_with_domain_home(xenbus_emulator, xenstored):
    emulator = xenbus_emulator(home="/local/domain/7", zero_watch_ids=True)
    c = bus_client(emulator)
    c.write("control/feature-quiesce", "1")
    c.watch("control", "ctl")
    assert until(c, ("control", "ctl"))
    with XenstoreClient(xenstored.uri) as dom0:
        assert dom0.read("/local/domain/7/control/feature-quiesce") == "1"
        dom0.write("/local/domain/7/control/snapshot/action", "create-snapshot")
    assert c.wait_event(2) == ("control/snapshot/action", "ctl")
    assert c.read("control/snapshot/action") == "create-snapshot"
    c.close()


# -- the quirks are real: plain pyxs 0.4.1 hangs on them ---------------------------

def _hangs(call, seconds=1.0):
    """Run call in a daemon thread; True if it has not returned after `seconds`."""
    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(seconds)
    return worker.is_alive()


def test_pyxs_refuses_monitor_over_xenbus(xenbus_emulator):
    emulator = xenbus_emulator()
    with pyxs.Client(xen_bus_path=emulator.path) as plain:
        with pytest.raises(PyXSError):
            plain.monitor()


@router_dies
@pytest.mark.parametrize("zero_ids", [False, True], ids=["modern-kernel", "old-kernel"])
def test_pyxs_watch_dies_on_zero_req_id_reply(xenbus_emulator, zero_ids):
    emulator = xenbus_emulator(zero_watch_ids=zero_ids)
    plain = pyxs.Client(xen_bus_path=emulator.path)
    plain.connect()
    plain.write(b"/pw", b"1")
    monitor = Monitor(copy.copy(plain))  # what monitor() would return without its ban
    hung = _hangs(lambda: monitor.watch(b"/pw", b"tok"))
    # With ids echoed the watch works; with req_id 0 the router thread dies
    # (UnexpectedPacket) and the caller waits forever.
    assert hung == zero_ids
    assert plain.router.thread.is_alive() != zero_ids
    if not zero_ids:
        plain.close()


@router_dies
def test_pyxs_dies_on_foreign_req_ids(xenbus_emulator):
    emulator = xenbus_emulator(foreign_req_ids=True)
    plain = pyxs.Client(xen_bus_path=emulator.path)
    plain.connect()
    assert _hangs(lambda: plain.write(b"/pf", b"1"))
    assert not plain.router.thread.is_alive()


# -- oxenstored, XenServer's daemon (root only) ------------------------------------

def test_oxenstored_smoke(oxenstored):
    c = XenstoreClient(oxenstored.uri, timeout=3.0)
    c.connect()
    exercise_api(c, "/ox")
    exercise_watch(c, "/ox")
    reconnects = []
    c.on_reconnect = lambda: (reconnects.append(1), c.write("/ox/adv", "1"))
    c.watch("/ox", "tok")
    assert until(c, ("/ox", "tok"))
    oxenstored.kill()
    oxenstored.restart()
    assert until(c, ("/ox/adv", "tok"))
    assert reconnects == [1]
    c.close()


def test_the_xenbus_device_is_never_waited_on_for_writability(xenbus_emulator, monkeypatch):
    """Linux's xenbus device poll() never reports writable (found on a real domU): a
    client that waits for that times out on every request. The pty emulator is
    writable, so the device's poll() is reproduced by refusing write readiness."""
    import xe_quiesce.xenstore as xenstore_module
    real_wait = xenstore_module._wait_fd

    def device_poll(fd, deadline, write=False, wake_fd=None):
        return False if write else real_wait(fd, deadline, wake_fd=wake_fd)

    monkeypatch.setattr(xenstore_module, "_wait_fd", device_poll)
    emulator = xenbus_emulator()
    with XenstoreClient("xenbus:" + emulator.path, timeout=2.0) as client:
        client.write("/local/domain/0/e2e-found", "yes")
        assert client.read("/local/domain/0/e2e-found") == "yes"
