"""The session's life as a state machine, without I/O: every allowed move, a refused one,
and the decisions of how a session ended (its thaw, a failure, a reconcile).

The values are the journal's (state.json, last.json) and `status`'s: they must not change.
"""
import pytest

from xe_quiesce.core import record as rec
from xe_quiesce.core.cancel import AbandonedError
from xe_quiesce.errors import FreezeError

MOUNTS = [{"mount_point": "/data", "devno": 2049, "mount_ids": [30]}]


def begun():
    return rec.SessionRecord.begin("abc", "cli", [100, 5], 10.0, 70.0, [101, 6])


def at(state):
    record = begun()
    if state == rec.FROZEN:
        record.advance(rec.FROZEN, mounts=MOUNTS)
    return record


def test_the_values_are_the_journals():
    assert (rec.QUIESCING, rec.FROZEN) == rec.ACTIVE == ("quiescing", "frozen")
    assert rec.RESULTS == ("thawed", "deadline-thawed", "thaw-failed", "failed", "abandoned",
                           "reconciled")
    assert AbandonedError.result == rec.ABANDONED


def test_a_new_record_is_quiescing_with_nothing_done():
    record = begun()
    assert dict(record) == {
        "session": "abc", "trigger": "cli", "status": "quiescing", "owner": [100, 5],
        "started": 10.0, "deadline": 70.0, "mounts": [], "hooks_run": [], "result": None,
        "guard_process": [101, 6]}


def test_quiescing_advances_to_frozen_with_its_mounts():
    record = begun()
    record.advance(rec.FROZEN, mounts=MOUNTS)
    assert record["status"] == "frozen" and record["mounts"] == MOUNTS
    assert record["result"] is None and "finished" not in record


ALLOWED_ENDS = [(state, result) for state, targets in sorted(rec.TRANSITIONS.items())
                for result in targets if result in rec.RESULTS]


@pytest.mark.parametrize("state,result", ALLOWED_ENDS,
                         ids=["{}->{}".format(*pair) for pair in ALLOWED_ENDS])
def test_every_allowed_end(state, result):
    record = at(state)
    record.finish(result, "why", now=99.0)
    assert record["status"] == record["result"] == result
    assert record["message"] == "why" and record["finished"] == 99.0
    assert "guard" not in record


def test_the_table_is_the_one_described():
    assert rec.TRANSITIONS == {
        "quiescing": ("frozen", "failed", "abandoned", "reconciled", "thawed"),
        "frozen": ("thawed", "deadline-thawed", "thaw-failed", "failed", "reconciled"),
    }


def test_finish_keeps_the_guards_report():
    record = at(rec.FROZEN)
    report = {"thawed": ["/data"], "reason": "deadline"}
    record.finish(rec.DEADLINE_THAWED, "late", guard=report, now=99.0)
    assert record["guard"] == report


@pytest.mark.parametrize("state,target", [
    (rec.QUIESCING, rec.DEADLINE_THAWED),  # nothing was held: the guard cannot be first
    (rec.QUIESCING, rec.THAW_FAILED),
    (rec.FROZEN, rec.ABANDONED),           # the last cancel point is before FROZEN
    (rec.FROZEN, rec.FROZEN),
])
def test_a_move_not_in_the_table_is_refused_and_changes_nothing(state, target):
    record = at(state)
    before = dict(record)
    move = record.advance if target in rec.ACTIVE else record.finish
    with pytest.raises(rec.TransitionError, match="no move from '{}' to '{}'".format(
            state, target)):
        move(target)
    assert dict(record) == before


@pytest.mark.parametrize("result", rec.RESULTS)
def test_a_finished_record_is_final(result):
    record = at(rec.FROZEN) if result in rec.TRANSITIONS[rec.FROZEN] else at(rec.QUIESCING)
    record.finish(result, now=1.0)
    with pytest.raises(rec.TransitionError, match="no move from"):
        record.finish(rec.THAWED)
    with pytest.raises(rec.TransitionError, match="no move from"):
        record.advance(rec.FROZEN)


def test_advance_is_for_active_states_and_finish_for_results():
    record = begun()
    with pytest.raises(rec.TransitionError, match="finish"):
        record.advance(rec.THAWED)
    with pytest.raises(rec.TransitionError, match="not a session result"):
        record.finish(rec.FROZEN)
    with pytest.raises(rec.TransitionError, match="not a session result"):
        record.finish("melted")


def test_the_owned_fields_change_only_by_a_transition():
    record = begun()
    record.note(hooks_run=["10-db"], guard_process=[102, 7])
    assert record["hooks_run"] == ["10-db"] and record["guard_process"] == [102, 7]
    for field in rec.OWNED:
        with pytest.raises(rec.TransitionError, match=field):
            record.note(**{field: "x"})
    with pytest.raises(rec.TransitionError, match="status"):
        record.advance(rec.FROZEN, status="thawed")
    assert record["status"] == "quiescing"
    with pytest.raises(TypeError):
        record["status"] = "thawed"


def test_adopting_a_dict_copies_it():
    fields = {"session": "abc", "status": "frozen", "mounts": MOUNTS}
    record = rec.SessionRecord(fields)
    record.finish(rec.RECONCILED, now=1.0)
    assert fields == {"session": "abc", "status": "frozen", "mounts": MOUNTS}


# -- how it ended ------------------------------------------------------------------------

def test_thaw_outcome():
    assert rec.thaw_outcome([], [], None) == ("thawed", "")
    assert rec.thaw_outcome([], ["hook 10-db: thaw failed"], {}) == (
        "thawed", "hook 10-db: thaw failed")
    assert rec.thaw_outcome(["/data: EIO"], ["hook x"], None) == (
        "thaw-failed", "/data: EIO; hook x")
    report = {"thawed": ["/data", "/srv"], "reason": "deadline"}
    assert rec.thaw_outcome([], [], report) == (
        "deadline-thawed",
        "the deadline guard had thawed /data, /srv (deadline) before the session did")
    assert rec.thaw_outcome(["/srv: EINVAL"], [], report) == (
        "deadline-thawed", "the deadline guard had thawed /data, /srv (deadline) before the "
        "session did; /srv: EINVAL")
    assert rec.thaw_outcome([], [], {"thawed": [], "reason": "released"})[0] == "thawed"


def test_failure_outcome():
    assert rec.failure_outcome(FreezeError("EBUSY on /data"), []) == (
        "failed", "EBUSY on /data")
    assert rec.failure_outcome(KeyboardInterrupt(), ["/data: EIO"]) == (
        "failed", "KeyboardInterrupt; /data: EIO")
    assert rec.failure_outcome(AbandonedError("XO gave up"), []) == (
        "abandoned", "XO gave up")


REPORT_ASKED = {"thawed": ["/data"], "reason": "thaw requested"}
REPORT_DEADLINE = {"thawed": ["/data"], "reason": "deadline"}


@pytest.mark.parametrize("report,thawed,errors,message", [
    (None, ["/data"], {}, "the session's process and its guard died; thawed now: /data"),
    (REPORT_DEADLINE, ["/data"], {},
     "the session's process and its guard died; thawed now: /data"),
    (REPORT_ASKED, [], {}, "thawed /data"),
    (REPORT_DEADLINE, [], {}, "the deadline guard thawed /data (deadline)"),
    ({"thawed": []}, [], {}, "the session's process ended; nothing was left frozen"),
    (None, [], {"/srv": "EIO"},
     "the session's process ended; nothing was left frozen; errors: /srv: EIO"),
])
def test_reconcile_message(report, thawed, errors, message):
    assert rec.reconcile_message(report, thawed, errors) == message


@pytest.mark.parametrize("status", rec.ACTIVE)
def test_reconciled_closes_an_active_session_without_changing_what_it_read(status):
    state = {"session": "abc", "trigger": "cli", "status": status, "mounts": MOUNTS,
             "updated": 5.0}
    closed = rec.reconciled(state, None, ["/data"], {}, now=7.0)
    assert dict(closed) == dict(
        state, status="reconciled", result="reconciled", finished=7.0,
        message="the session's process and its guard died; thawed now: /data")
    assert state["status"] == status
    asked = rec.reconciled(state, REPORT_ASKED, [], {}, result=rec.THAWED, now=7.0)
    assert (asked["result"], asked["message"], asked["guard"]) == (
        "thawed", "thawed /data", REPORT_ASKED)


def test_reconciled_refuses_a_finished_session():
    with pytest.raises(rec.TransitionError):
        rec.reconciled({"session": "abc", "status": "thawed"}, None, [], {})
