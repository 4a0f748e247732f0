"""The guest's conversation state machine, without I/O: every transition, every failure.

The expected xenstore operations are the contract's (docs/xapi-protocol.md): the
success path section a, the guest's answers to the failure modes of section b, and
the rules of section e (C/error before the status, status last, no
create-snapshotinfo, busy answered and not queued).
"""
import json
import logging

import pytest

from xe_quiesce.triggers import conversation as cv

D = "/local/domain/7"
C = D + "/control/snapshot"
VM = "0b6a9e0e-4f4e-4c54-a5a8-6d0e4c1b7a01"
V = "/vss/" + VM
VDI1 = "11111111-2222-4333-8444-555555555555"
VDI2 = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
SNAP_VM = "99999999-8888-4777-8666-555555555555"
BACKEND = "/local/domain/0/backend/vbd3/7/"


def vbd(devid, device_type="disk", vdi=None, backend=None, error=None):
    return cv.VbdNode(devid, device_type, BACKEND + devid if backend is None else backend,
                      vdi, error)


VBDS = [vbd("51728", vdi=VDI2), vbd("51712", vdi=VDI1), vbd("5632", "cdrom")]
SUMMARY = {"session": "abc", "frozen": ["/data", "/"], "hooks": [], "result": "frozen"}
FILESYSTEMS = [{"mount_point": "/", "fstype": "ext4", "vbds": [51712]},
               {"mount_point": "/data", "fstype": "xfs", "vbds": [51728]}]
THAWED = {"result": "thawed", "frozen": ["/data", "/"], "window_seconds": 0.5, "message": ""}
IDS = {VDI1: "c1c1c1c1-0000-4000-8000-000000000001", VDI2: "c2c2c2c2-0000-4000-8000-000000000002"}


def xs(commands):
    """The xenstore operations among commands, as comparable tuples."""
    ops = []
    for command in commands:
        if isinstance(command, cv.Write):
            ops.append(("write", command.path, command.value))
        elif isinstance(command, cv.Rm):
            ops.append(("rm", command.path))
    return ops


def kinds(commands):
    return [type(command).__name__ for command in commands]


def published(commands):
    return [command.state for command in commands if isinstance(command, cv.Publish)]


def assert_error_reported(commands, code, text=""):
    ops = xs(commands)
    writes = [op for op in ops if op[0] == "write" and op[1].startswith(C)]
    assert [op[1] for op in writes] == [C + "/error", C + "/error/code", C + "/status"]
    assert writes[1][2] == code and writes[2][2] == "snapshot-error"
    assert text in writes[0][2]
    assert all(" " <= ch <= "~" for ch in writes[0][2])
    return writes[0][2]


V_CLEANUP = [("rm", V + "/" + key) for key in ("snapshot", "snapinfo", "snapuuid",
                                                "snaptype", "status")]


# -- drivers: each returns the commands of its last step ---------------------------------

def new():
    return cv.Conversation(D, "9.9")


def to_resolving(m):
    return m.handle(cv.ActionSeen("create-snapshot"))


def to_listing(m):
    to_resolving(m)
    return m.handle(cv.VssRead(V, None, "7"))


def to_quiescing(m):
    to_listing(m)
    return m.handle(cv.VbdsRead(VBDS))


def to_frozen(m):
    to_quiescing(m)
    return m.handle(cv.QuiesceOk(SUMMARY, FILESYSTEMS))


def to_thawing(m):
    to_frozen(m)
    return m.handle(cv.StatusSeen("snapshots-created"))


def to_collecting(m):
    to_thawing(m)
    return m.handle(cv.Thawed(THAWED))


def collect(m, snaptype="vm", snapuuid=SNAP_VM, ids=IDS):
    return m.handle(cv.ResultRead(snaptype, snapuuid, ids))


def fail_frozen(m, event):
    """From FROZEN, `event` must thaw first; returns the report after Thawed."""
    to_frozen(m)
    commands = m.handle(event)
    assert kinds(commands)[-1] == "Thaw" and xs(commands) == []
    assert m.state == cv.THAWING
    return m.handle(cv.Thawed(THAWED))


# -- the success path -------------------------------------------------------------------

def test_success_path_keys_values_and_order_are_the_contracts():
    m = new()
    steps = [to_resolving(m), m.handle(cv.VssRead(V, None, "7")), m.handle(cv.VbdsRead(VBDS)),
             m.handle(cv.QuiesceOk(SUMMARY, FILESYSTEMS)),
             m.handle(cv.StatusSeen("create-snapshots")),  # our own write, echoed
             m.handle(cv.StatusSeen("snapshots-created")), m.handle(cv.Thawed(THAWED))]
    last = collect(m)
    commands = [c for step in steps for c in step] + last
    ops = xs(commands)
    chunks = [op for op in ops if op[1].startswith(C + "/snapid/")]
    assert ops == (
        [("rm", C + "/action")] + V_CLEANUP
        + [("write", V + "/snapshot/" + VDI1, ""), ("write", V + "/snapshot/" + VDI2, "")]
        + [("write", V + "/status", "create-snapshots")]
        + [("write", C + "/snapuuid", SNAP_VM), ("rm", C + "/snapid")] + chunks
        + [("write", C + "/status", "snapshot-created")] + V_CLEANUP)
    assert [op[1] for op in chunks] == [C + "/snapid/{}".format(n) for n in range(len(chunks))]
    manifest = json.loads("".join(op[2] for op in chunks))
    assert manifest["frozen"] == ["/data", "/"]
    assert manifest["vdis"] == {"51712": VDI1, "51728": VDI2}
    assert manifest["snapshot_vdis"] == IDS and manifest["snapuuid"] == SNAP_VM
    assert manifest["filesystems"] == FILESYSTEMS
    # the freeze sits between the V/snapshot nodes and V/status, the thaw before C
    assert kinds(steps[2])[-1] == "StartSession" and steps[2][-1].vbds == ["51712", "51728"]
    assert kinds(steps[5])[-1] == "Thaw"
    assert kinds(steps[6]) == ["ReadResult"] and steps[6][0] == cv.ReadResult(V, [VDI1, VDI2])
    assert published(commands) == ["quiescing", "frozen", "thawing", "idle"]
    assert m.state == cv.IDLE
    assert kinds(steps[3])[-1] == "AwaitStatus" and steps[3][-1].path == V + "/status"


def test_action_is_deleted_first_as_the_acknowledgement_once_journaled():
    commands = to_resolving(new())
    assert commands[0] == cv.Record({"control": C, "report": None})
    assert commands[1] == cv.Rm(C + "/action")
    assert kinds(commands)[-1] == "ReadVss"


def answer_journaled_first(commands):
    """The Record before the first write to C holds exactly the C writes that follow."""
    to_c = [i for i, c in enumerate(commands) if isinstance(c, (cv.Write, cv.Rm))
            and c.path.startswith(C)]
    records = [i for i, c in enumerate(commands) if isinstance(c, cv.Record) and c.request]
    assert records and records[0] < to_c[0]
    report = commands[records[0]].request["report"]
    assert [tuple(op) for op in report] == [op for op in xs(commands) if op[1].startswith(C)]
    closed = [i for i, c in enumerate(commands) if c == cv.Record(None)]
    assert closed and closed[0] > to_c[-1]
    return report


def test_success_and_error_answers_are_journaled_before_they_are_written():
    m = new()
    to_collecting(m)
    report = answer_journaled_first(collect(m))
    assert report[-1] == ["write", C + "/status", "snapshot-created"]
    m = new()
    to_resolving(m)
    report = answer_journaled_first(m.handle(cv.VssRead(None, None, None)))
    assert report[-1] == ["write", C + "/status", "snapshot-error"]


def test_busy_answer_is_journaled_before_the_second_action_is_deleted():
    m = new()
    to_frozen(m)
    commands = m.handle(cv.ActionSeen("create-snapshot"))
    assert kinds(commands)[:2] == ["Record", "Rm"]
    assert commands[0].request["report"][-1] == ["write", C + "/status", "snapshot-error"]


@pytest.mark.parametrize("owner, text", [
    ("", "does not exist"), ("0", "belongs to domain 0"), (None, "another domain")])
def test_vss_that_is_missing_or_not_the_guests_is_refused_before_freezing(owner, text):
    m = new()
    to_resolving(m)
    commands = m.handle(cv.VssRead(V, None, owner))
    assert_error_reported(commands, "bad-request", text)
    assert "StartSession" not in kinds(commands)


def test_recover_replays_the_journaled_answer_to_a_waiting_host():
    m = new()
    to_collecting(m)
    report = answer_journaled_first(collect(m))
    commands = new().recover({"control": C, "report": report}, V, host_waiting=True)
    assert [op for op in xs(commands) if op[1].startswith(C)] == [tuple(op) for op in report]
    assert commands[-1] == cv.Record(None)
    again = new().recover({"control": C, "report": report}, V, host_waiting=False)
    assert [op for op in xs(again) if op[1].startswith(C)] == []  # never twice


def test_cdroms_are_left_out_and_the_machine_is_reusable():
    m = new()
    to_collecting(m)
    collect(m)
    commands = to_quiescing(m)  # a second request after the first completed
    assert [op[1] for op in xs(commands) if op[0] == "write"] == [
        V + "/snapshot/" + VDI1, V + "/snapshot/" + VDI2]
    assert commands[-1] == cv.StartSession(["51712", "51728"])


def test_snapid_chunks_are_bounded_ascii_and_reassemble():
    manifest = {"filesystems": [{"mount_point": "/srv/d\u00e9p\u00f4t\n{}".format(n)}
                                for n in range(200)]}
    chunks = cv.snapid_chunks(manifest)
    assert len(chunks) > 3
    assert all(0 < len(chunk) <= 1020 for chunk in chunks)
    assert all(" " <= ch <= "~" for chunk in chunks for ch in chunk)
    assert json.loads("".join(chunks)) == manifest


# -- the request: action values ----------------------------------------------------------

def test_action_absent_is_ignored():
    m = new()
    assert m.handle(cv.ActionSeen(None)) == [] and m.state == cv.IDLE


def test_unknown_action_is_logged_once_and_left_alone():
    m = new()
    first = m.handle(cv.ActionSeen("create-snapshotinfo"))
    assert xs(first) == [] and kinds(first) == ["Log"] and first[0].level == logging.WARNING
    assert "create-snapshotinfo" in first[0].message
    assert m.handle(cv.ActionSeen("create-snapshotinfo")) == []  # same value: quiet
    m.handle(cv.ActionSeen(None))
    assert kinds(m.handle(cv.ActionSeen("create-snapshotinfo"))) == ["Log"]
    assert m.state == cv.IDLE


@pytest.mark.parametrize("driver", [to_resolving, to_listing, to_quiescing, to_frozen,
                                    to_thawing, to_collecting])
def test_action_written_again_while_busy_is_answered_busy_not_queued(driver):
    m = new()
    driver(m)
    state = m.state
    commands = m.handle(cv.ActionSeen("create-snapshot"))
    assert xs(commands)[0] == ("rm", C + "/action")
    assert_error_reported(commands, "busy", "busy")
    assert m.state == state
    # an echo of our own deletion, and an unknown value, change nothing
    assert m.handle(cv.ActionSeen(None)) == []
    assert xs(m.handle(cv.ActionSeen("something-else"))) == []


def test_after_a_busy_answer_the_running_session_reports_nothing_to_c():
    m = new()
    to_frozen(m)
    m.handle(cv.ActionSeen("create-snapshot"))
    m.handle(cv.StatusSeen("snapshots-created"))
    m.handle(cv.Thawed(THAWED))
    commands = collect(m)
    assert [op for op in xs(commands) if op[1].startswith(C)] == []
    assert xs(commands) == V_CLEANUP
    assert any(SNAP_VM in c.message for c in commands if isinstance(c, cv.Log))
    assert m.state == cv.IDLE


def test_after_a_busy_answer_a_failure_reports_nothing_to_c_either():
    m = new()
    to_frozen(m)
    m.handle(cv.ActionSeen("create-snapshot"))
    m.handle(cv.Timeout())
    commands = m.handle(cv.Thawed(THAWED))
    assert [op for op in xs(commands) if op[1].startswith(C)] == []


# -- garbage in the request: clear error, nothing frozen ----------------------------------

@pytest.mark.parametrize("value, error, text", [
    (None, None, "vss is missing"),
    ("/vss/not-a-uuid", None, "/vss/<vm-uuid>"),
    ("/local/domain/0", None, "/vss/<vm-uuid>"),
    ("/vss/" + VM + "/x", None, "/vss/<vm-uuid>"),
    ("/vss/" + "g" * 8 + VM[8:], None, "/vss/<vm-uuid>"),
    (None, "value of vss is not text: b'\\xff'", "not text"),
])
def test_garbage_vss_is_a_clear_error_and_nothing_is_frozen(value, error, text):
    m = new()
    to_resolving(m)
    commands = m.handle(cv.VssRead(value, error, "7"))
    assert_error_reported(commands, "bad-request", text)
    assert "StartSession" not in kinds(commands) and "Thaw" not in kinds(commands)
    assert [op for op in xs(commands) if op[1].startswith("/vss")] == []  # V unknown
    assert m.state == cv.IDLE and published(commands) == ["idle"]


@pytest.mark.parametrize("vbds, text", [
    ([vbd("51712", device_type=None, vdi=VDI1)], "device-type is missing"),
    ([vbd("51712", device_type="floppy", vdi=VDI1)], "expected disk or cdrom"),
    ([vbd("xvda", vdi=VDI1)], "not a number"),
    ([vbd("51712", vdi=VDI1, backend=None)._replace(backend=None)], "backend is missing"),
    ([vbd("51712", vdi=VDI1, backend="../../etc")], "not a xenstore path"),
    ([vbd("51712")], "sm-data/vdi-uuid is missing"),
    ([vbd("51712", vdi="not-a-uuid")], "not a uuid"),
    ([vbd("51712", vdi="\u00e9" * 36)], "not a uuid"),
    ([vbd("51712", vdi=VDI1), vbd("51728", vdi=VDI1.upper())], "on two VBDs"),
    ([vbd("51712", error="value of .../backend is not text: b'\\xfe'")], "not text"),
    ([vbd("5632", "cdrom")], "no disk VBD"),
    ([], "no disk VBD"),
])
def test_garbage_vbd_or_backend_is_a_clear_error_and_nothing_is_frozen(vbds, text):
    m = new()
    to_listing(m)
    commands = m.handle(cv.VbdsRead(vbds))
    message = assert_error_reported(commands, "bad-request", text)
    assert len(message) <= cv.ERROR_MAX
    assert "StartSession" not in kinds(commands)
    assert xs(commands)[-5:] == V_CLEANUP
    assert m.state == cv.IDLE


def test_printable_makes_any_text_a_safe_xenstore_value():
    assert cv.printable("a\nb\tc\u00e9") == "a b c?"
    assert len(cv.printable("x" * 5000)) == cv.ERROR_MAX


# -- the session ---------------------------------------------------------------------------

@pytest.mark.parametrize("code", ["busy", "quiesce-failed"])
def test_session_failure_is_reported_without_thawing(code):
    m = new()
    to_quiescing(m)
    commands = m.handle(cv.QuiesceFailed(code, "{}: something".format(code)))
    assert_error_reported(commands, code, "something")
    assert "Thaw" not in kinds(commands)
    assert xs(commands)[-5:] == V_CLEANUP and m.state == cv.IDLE


def test_nothing_frozen_is_thawed_and_refused():
    m = new()
    to_quiescing(m)
    commands = m.handle(cv.QuiesceOk(dict(SUMMARY, frozen=[]), []))
    assert kinds(commands)[-1] == "Thaw" and ("write", V + "/status", "create-snapshots") \
        not in xs(commands)
    assert_error_reported(m.handle(cv.Thawed(THAWED)), "nothing-frozen")


def test_frozen_writes_create_snapshots_then_waits():
    m = new()
    commands = to_frozen(m)
    assert xs(commands) == [("write", V + "/status", "create-snapshots")]
    assert kinds(commands)[-1] == "AwaitStatus"
    assert m.handle(cv.StatusSeen("create-snapshots")) == [] and m.state == cv.FROZEN


# -- snapwatchd's answers and silences (F7-F13) -------------------------------------------

def test_snapshots_failed_thaws_then_reports_snapshot_error():  # F8, F9, F10
    assert_error_reported(fail_frozen(new(), cv.StatusSeen("snapshots-failed")),
                          "snapshots-failed", "snapshots-failed")


@pytest.mark.parametrize("value", ["snapshotinfo-failed", "provider-initialized", "",
                                   "snapshots-created-not"])
def test_unexpected_status_thaws_then_reports(value):  # F12 and anything odd
    assert_error_reported(fail_frozen(new(), cv.StatusSeen(value)), "unexpected-status",
                          "unexpected")


def test_status_vanishing_thaws_then_reports():  # xenstored restarted, domain rebuilt
    assert_error_reported(fail_frozen(new(), cv.StatusSeen(None)), "unexpected-status",
                          "vanished")


def test_silence_until_the_deadline_thaws_then_reports_timeout():  # F11, F13
    report = fail_frozen(new(), cv.Timeout())
    assert_error_reported(report, "timeout", "deadline")
    assert xs(report)[-5:] == V_CLEANUP


def test_per_disk_snapshot_is_refused():  # F7: V/snaptype = vdi
    m = new()
    to_collecting(m)
    commands = collect(m, snaptype="vdi", snapuuid=IDS[VDI1])
    assert_error_reported(commands, "not-whole-vm", "per-disk")
    assert ("write", C + "/snapuuid", IDS[VDI1]) not in xs(commands)


@pytest.mark.parametrize("snaptype, snapuuid, code", [
    (None, SNAP_VM, "not-whole-vm"), ("vm", None, "bad-result"), ("vm", "garbage", "bad-result"),
])
def test_bad_result_keys_are_refused(snaptype, snapuuid, code):
    m = new()
    to_collecting(m)
    assert_error_reported(collect(m, snaptype, snapuuid), code)


def test_deadline_guard_thaw_before_the_answer_is_an_error():
    m = new()
    to_thawing(m)
    commands = m.handle(cv.Thawed(dict(THAWED, result="deadline-thawed")))
    assert_error_reported(commands, "deadline-thawed", "not quiesced")


def test_thaw_problems_after_a_good_snapshot_are_logged_and_reported_as_success():
    m = new()
    to_thawing(m)
    commands = m.handle(cv.Thawed(dict(THAWED, result="thaw-failed", message="EIO")))
    assert [c.level for c in commands if isinstance(c, cv.Log)] == [logging.ERROR]
    assert kinds(commands)[-1] == "ReadResult"
    assert ("write", C + "/status", "snapshot-created") in xs(collect(m))


# -- xenstore failures, reconnects, the home ------------------------------------------------

def test_io_failure_when_idle_is_only_logged():
    m = new()
    commands = m.handle(cv.IoFailed("EACCES"))
    assert kinds(commands) == ["Log"] and m.state == cv.IDLE


@pytest.mark.parametrize("driver", [to_resolving, to_listing, to_quiescing])
def test_io_failure_before_freezing_reports_xenstore_error(driver):
    m = new()
    driver(m)
    assert_error_reported(m.handle(cv.IoFailed("EACCES")), "xenstore", "EACCES")
    assert m.state == cv.IDLE


def test_io_failure_while_frozen_thaws_first():
    assert_error_reported(fail_frozen(new(), cv.IoFailed("connection lost")), "xenstore")


def test_io_failure_reading_the_result_reports_it():
    m = new()
    to_collecting(m)
    assert_error_reported(m.handle(cv.IoFailed("not text")), "xenstore", "result")


@pytest.mark.parametrize("driver", [new, to_listing, to_frozen, to_collecting])
def test_reconnect_advertises_again_in_any_state(driver):
    m = new()
    if driver is not new:
        driver(m)
    state = m.state
    assert kinds(m.handle(cv.Reconnected())) == ["Log", "Advertise"] and m.state == state


@pytest.mark.parametrize("driver", [new, to_frozen])
def test_home_changes_advertise_when_the_key_is_gone_or_the_domain_is_new(driver):
    m = new()
    if driver is not new:
        driver(m)
    assert m.handle(cv.HomeChanged("1", "u1")) == []
    assert m.handle(cv.HomeChanged(None, "u1")) == [cv.Advertise()]     # key deleted
    assert m.handle(cv.HomeChanged("1", "u2")) == [cv.Advertise()]      # resume/migrate
    assert m.handle(cv.HomeChanged("1", "u2")) == []


# -- stopping ---------------------------------------------------------------------------

def test_stop_when_idle_unadvertises_and_exits():
    m = new()
    assert kinds(m.handle(cv.Stop())) == ["Unadvertise", "Exit"] and m.state == cv.STOPPED


def test_stop_while_frozen_thaws_reports_then_exits():
    m = new()
    report = fail_frozen(m, cv.Stop())
    assert_error_reported(report, "stopped", "stopped")
    assert kinds(report)[-2:] == ["Unadvertise", "Exit"] and m.state == cv.STOPPED


def test_events_that_do_not_belong_to_a_state_change_nothing():
    m = new()
    for event in (cv.StatusSeen("snapshots-created"), cv.Timeout(), cv.Thawed(THAWED),
                  cv.ResultRead("vm", SNAP_VM, {}), cv.QuiesceOk(SUMMARY, [])):
        commands = m.handle(event)
        assert kinds(commands) == ["Log"] and commands[0].level == logging.DEBUG
        assert m.state == cv.IDLE


# -- whole-table checks ------------------------------------------------------------------

def test_every_transition_is_exercised_and_create_snapshotinfo_never_sent(monkeypatch):
    """Run every test above through a recording machine: each table entry is hit."""
    seen, written = set(), []
    original = cv.Conversation.handle

    def recording(self, event):
        before = self.state
        commands = original(self, event)
        seen.add((before, type(event)))
        written.extend(c.value for c in commands if isinstance(c, cv.Write))
        return commands

    monkeypatch.setattr(cv.Conversation, "handle", recording)
    for name, function in sorted(globals().items()):
        if not name.startswith("test_") or name.startswith("test_every_"):
            continue
        marks = getattr(function, "pytestmark", [])
        params = [m for m in marks if m.name == "parametrize"]
        if not params:
            function()
            continue
        argnames = [n.strip() for n in params[0].args[0].split(",")]
        for values in params[0].args[1]:
            values = values if len(argnames) > 1 else (values,)
            function(**dict(zip(argnames, values)))
    table = set(cv.TRANSITIONS)
    table |= {(state, event) for event in cv.ANY_STATE for state in (cv.IDLE, cv.FROZEN)}
    assert table - seen == set()
    assert "create-snapshotinfo" not in written


def test_recover_after_a_crash_clears_v_and_answers_a_waiting_host():
    commands = new().recover(None, V, host_waiting=True)
    assert [op for op in xs(commands) if op[0] == "rm"] == V_CLEANUP
    assert_error_reported(commands, "restarted", "restarted during this request")


def test_recover_leaves_the_host_alone_when_it_does_not_wait():
    assert xs(new().recover(None, None, host_waiting=False)) == []
