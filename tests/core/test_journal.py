"""The journal stores what it is given: it never changes the record it is handed, and
reconcile only reads, thaws from the recorded mounts and stores record.reconciled's
outcome. A temporary run directory and a pretend kernel: no root, nothing frozen."""
import json

from xe_quiesce.core import record as rec
from xe_quiesce.core.journal import Journal

DEAD = [2 ** 22 + 1, 1.0]  # above pid_max's default: no such process


class ThawingOps(object):
    """The kernel calls thaw_recorded makes; every recorded mount is still there."""

    def __init__(self):
        self.thawed = []

    def open(self, point):
        return point

    def mount_id(self, fd):
        return 30

    def thaw(self, fd):
        self.thawed.append(fd)
        return True

    def close(self, fd):
        pass


def stored(journal):
    with open(journal.state_path) as handle:
        return json.load(handle)


def test_write_stores_a_copy_with_its_time_and_leaves_the_record_alone(tmp_path):
    journal = Journal(str(tmp_path / "run"))
    record = rec.SessionRecord.begin("abc", "cli", DEAD, 10.0, 70.0, None)
    written = journal.write(record)
    assert "updated" not in record
    assert written == stored(journal) == dict(record, updated=written["updated"])


def test_close_stores_the_record_and_the_triggers_last_result(tmp_path):
    journal = Journal(str(tmp_path / "run"))
    record = rec.SessionRecord.begin("abc", "xo", DEAD, 10.0, 70.0, None)
    journal.write(record)
    (tmp_path / "run" / "guard-abc.json").write_text('{"thawed": []}')
    record.finish(rec.FAILED, "EBUSY", now=12.0)
    closed = journal.close(record)
    assert closed == stored(journal) and closed["status"] == closed["result"] == "failed"
    assert journal.last_results() == {"xo": {
        "session": "abc", "result": "failed", "message": "EBUSY", "started": 10.0,
        "finished": 12.0, "mounts": [], "guard": None}}
    assert not (tmp_path / "run" / "guard-abc.json").exists()


def test_reconcile_thaws_the_recorded_mounts_and_stores_the_outcome(tmp_path):
    ops = ThawingOps()
    journal = Journal(str(tmp_path / "run"), ops=ops)
    record = rec.SessionRecord.begin("abc", "cli", DEAD, 10.0, 70.0, None)
    record.advance(rec.FROZEN, mounts=[{"mount_point": "/data", "mount_ids": [30]}])
    journal.write(record)
    closed = journal.reconcile()
    assert ops.thawed == ["/data"]
    assert closed == stored(journal)
    assert (closed["status"], closed["result"], closed["message"]) == (
        "reconciled", "reconciled", "the session's process and its guard died; thawed now: "
        "/data")
    assert journal.last_results()["cli"]["result"] == "reconciled"
    assert journal.reconcile() is None, "a closed session is not reconciled again"
