"""The session journal in the run directory, and reconciliation after a crash.

`state.json` says what the current (or last) session froze, who owns it, its deadline and
its guard; it is replaced atomically, so a crash leaves either the old or the new state.
`last.json` keeps the last result per trigger for `status`. `xenstore-request.json` is the
host's request in progress (conversation.Record): written before the request is
acknowledged and before it is answered, removed once it is over, so a restart knows
whether the host still waits and what to answer. The run directory lives on
tmpfs (/run): writing there never touches a filesystem we freeze.

Every command starts with `reconcile()`: a session whose owner and guard are both gone
while the journal says frozen is thawed from the journal's own list of mounts.

The journal stores what it is given and decides nothing: the session record and its
moves are record.SessionRecord's, how a reconciled session ended is record.reconciled's.
"""
import json
import os
import time

from ..errors import QuiesceError
from ..linux import procs
from ..linux.fsops import FsOps
from .freezer import thaw_recorded
from .record import ACTIVE, RECONCILED, reconciled


class Journal(object):
    def __init__(self, run_dir, ops=None):
        self.run_dir = run_dir
        self.ops = ops or FsOps()
        self.state_path = os.path.join(run_dir, "state.json")
        self.last_path = os.path.join(run_dir, "last.json")
        self.request_path = os.path.join(run_dir, "xenstore-request.json")

    def ensure_dir(self):
        try:
            os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
            os.chmod(self.run_dir, 0o700)
        except OSError as error:
            raise QuiesceError("run directory {}: {}".format(self.run_dir, error.strerror))

    def guard_report_path(self, session_id):
        return os.path.join(self.run_dir, "guard-{}.json".format(session_id))

    def _load(self, path):
        try:
            with open(path) as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            return {"status": "unreadable", "message": "{}: {}".format(path, error)}

    def _store(self, path, data):
        tmp = "{}.{}.tmp".format(path, os.getpid())
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)

    def read(self):
        return self._load(self.state_path)

    def write(self, record):
        """Store the session record (a record.SessionRecord) with the time of this
        write; returns what was stored. `record` itself is left as it is."""
        self.ensure_dir()
        stored = dict(record, updated=time.time())
        self._store(self.state_path, stored)
        return stored

    def read_request(self):
        request = self._load(self.request_path)
        return request if isinstance(request, dict) and "control" in request else None

    def write_request(self, request):
        """Journal the host's request (None: it is over)."""
        if request is None:
            try:
                os.unlink(self.request_path)
            except FileNotFoundError:
                pass
            return
        self.ensure_dir()
        self._store(self.request_path, request)

    def last_results(self):
        return self._load(self.last_path) or {}

    def close(self, record):
        """Store a finished record and its trigger's last result; returns what was stored.
        The guard's report is in the record now (SessionRecord.finish), so its file goes."""
        stored = self.write(record)
        results = self.last_results()
        results[record.get("trigger", "unknown")] = {
            key: record.get(key) for key in
            ("session", "result", "message", "started", "finished", "mounts", "guard")}
        self._store(self.last_path, results)
        try:
            os.unlink(self.guard_report_path(record["session"]))
        except OSError:
            pass
        return stored

    def active(self):
        """The journal's session if it is still live (owner or guard running), else None."""
        state = self.read()
        if not state or state.get("status") not in ACTIVE:
            return None
        if procs.alive(state.get("owner")):
            return state
        if procs.alive(state.get("guard_process")) and not self.guard_report(state["session"]):
            return state  # a detached freeze: the guard holds it until thaw or deadline
        return None

    def status(self):
        """What `status` shows from the journal: the live session and the last results."""
        state = self.active()
        active = None
        if state:
            active = {
                "session": state["session"], "trigger": state.get("trigger"),
                "status": state.get("status"),
                "mounts": [mount["mount_point"] for mount in state.get("mounts", [])],
                "seconds_left": max(0.0, state["deadline"] - time.time()),
                "guard_running": procs.alive(state.get("guard_process")),
            }
        return {"active": active, "last": self.last_results()}

    def guard_report(self, session_id):
        return self._load(self.guard_report_path(session_id))

    def reconcile(self, result=RECONCILED):
        """Thaw and close a session whose owner and guard died; returns it, or None.

        `result` names the outcome: RECONCILED after a crash, THAWED when `thaw` asked
        the guard to act and this only closes the books.
        """
        state = self.read()
        if not state or state.get("status") not in ACTIVE or self.active():
            return None
        thawed, errors = thaw_recorded(state.get("mounts", []), self.ops)
        return self.close(reconciled(state, self.guard_report(state["session"]), thawed,
                                     errors, result))
