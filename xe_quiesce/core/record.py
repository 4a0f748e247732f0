"""A quiesce session's life as states and transitions, and the one owner of its record.

Why a module of its own: the session record (what the journal keeps in state.json and
`status` shows) is moved by the session, closed by the journal's reconcile after a
crash and by `xe-quiesce thaw` after a detached freeze, and its results are tested by
every trigger. Here its states and results are named once, the moves between them are
a table, and `SessionRecord` is the only code that changes a record's status, result,
message and finish time: a move the table does not allow is a programming error,
raised before anything is written. How a session ended (its own thaw, a failure, a
dead owner reconciled) is decided by pure functions beside it. No I/O, like the XAPI
conversation's machine (triggers/conversation.py), so every transition and outcome is
tested without a filesystem or a clock.
"""
import time
from collections.abc import Mapping

# -- states: while these are recorded, filesystems may be frozen ----------------------
QUIESCING = "quiescing"              # freeze hooks running, then the FIFREEZEs
FROZEN = "frozen"                    # every planned filesystem frozen, held to the deadline

# -- results: how it ended (a finished record's status is its result) -----------------
THAWED = "thawed"                    # thawed by the session (or by `xe-quiesce thaw`)
DEADLINE_THAWED = "deadline-thawed"  # the guard thawed first: the snapshot may not be quiesced
THAW_FAILED = "thaw-failed"          # a FITHAW failed
FAILED = "failed"                    # an error before or while freezing; undone
ABANDONED = "abandoned"              # the trigger's asker stopped waiting; undone
RECONCILED = "reconciled"            # owner and guard died; a later command closed it

ACTIVE = (QUIESCING, FROZEN)
RESULTS = (THAWED, DEADLINE_THAWED, THAW_FAILED, FAILED, ABANDONED, RECONCILED)

# Where each state may go. A session is born QUIESCING (SessionRecord.begin); results
# are final. FROZEN may still fail (its record not written: the session thaws at once);
# only QUIESCING is abandoned (the last cancel point is right after the FIFREEZEs).
# Any active state may be RECONCILED (owner and guard died) or THAWED by `xe-quiesce
# thaw` closing a detached session after its guard thawed it.
TRANSITIONS = {
    QUIESCING: (FROZEN, FAILED, ABANDONED, RECONCILED, THAWED),
    FROZEN: (THAWED, DEADLINE_THAWED, THAW_FAILED, FAILED, RECONCILED),
}

# The fields only a transition changes.
OWNED = ("status", "result", "message", "finished")


class TransitionError(RuntimeError):
    """A move the table does not allow, or an owned field given to note(): a bug, not a
    user's error, so it is not a QuiesceError that would be shown as one line."""


class SessionRecord(Mapping):
    """The session record, read as a mapping; changed only through its methods.

    The journal stores a copy of it (`dict(record)`); what it read back is adopted with
    `SessionRecord(fields)`, which copies too, so no caller's dict is changed under it.
    """

    def __init__(self, fields):
        self._fields = dict(fields)

    @classmethod
    def begin(cls, session, trigger, owner, started, deadline, guard_process):
        """A new session's record: quiescing, nothing frozen or run yet."""
        return cls({
            "session": session, "trigger": trigger, "status": QUIESCING, "owner": owner,
            "started": started, "deadline": deadline, "mounts": [], "hooks_run": [],
            "result": None, "guard_process": guard_process,
        })

    def __getitem__(self, key):
        return self._fields[key]

    def __iter__(self):
        return iter(self._fields)

    def __len__(self):
        return len(self._fields)

    def __repr__(self):
        return "SessionRecord({!r})".format(self._fields)

    def note(self, **fields):
        """Record what the session did (mounts, hooks run, its guard, the deferred log);
        never its state, which only advance() and finish() move."""
        owned = sorted(set(fields) & set(OWNED))
        if owned:
            raise TransitionError("{} of a session record change only by a transition"
                                  .format(", ".join(owned)))
        self._fields.update(fields)

    def advance(self, state, **fields):
        """Move to the active `state`, noting `fields` with it (FROZEN: the mounts)."""
        if state not in ACTIVE:
            raise TransitionError("{!r} is not an active state; a session ends with "
                                  "finish()".format(state))
        self._allow(state)
        self.note(**fields)
        self._fields["status"] = state

    def finish(self, result, message="", guard=None, now=None):
        """End the session with `result`: its status becomes the result, with why and
        when, and the guard's report if it wrote one."""
        if result not in RESULTS:
            raise TransitionError("{!r} is not a session result".format(result))
        self._allow(result)
        self._fields.update(status=result, result=result, message=message,
                            finished=time.time() if now is None else now)
        if guard:
            self._fields["guard"] = guard

    def _allow(self, target):
        status = self._fields.get("status")
        if target not in TRANSITIONS.get(status, ()):
            raise TransitionError("session {}: no move from {!r} to {!r}".format(
                self._fields.get("session"), status, target))


def thaw_outcome(problems, hook_problems, report):
    """(result, message) of a session's own thaw: the thaw's and the hooks' problems, and
    whether the guard's report says it thawed first (then the snapshot taken meanwhile
    may not be quiesced, and the result says so)."""
    message = "; ".join(list(problems) + list(hook_problems))
    result = THAW_FAILED if problems else THAWED
    if report and report.get("thawed"):
        result = DEADLINE_THAWED
        message = "the deadline guard had thawed {} ({}) before the session did".format(
            ", ".join(report["thawed"]), report.get("reason")) + (
                "; " + message if message else "")
    return result, message


def failure_outcome(error, problems):
    """(result, message) of a session undone by `error`: the error's own result
    (cancel.AbandonedError's) or FAILED, and the thaw's problems after its text."""
    message = str(error) or error.__class__.__name__
    if problems:
        message += "; " + "; ".join(problems)
    return getattr(error, "result", FAILED), message


def reconcile_message(report, thawed, errors):
    """Why a session whose owner and guard are gone is being closed: what was thawed from
    the journal's mounts now (`thawed`, `errors` of freezer.thaw_recorded) or, failing
    that, what the guard's report says it did before it ended."""
    if thawed:
        message = "the session's process and its guard died; thawed now: {}".format(
            ", ".join(thawed))
    elif report and report.get("thawed") and report.get("reason") == "thaw requested":
        message = "thawed {}".format(", ".join(report["thawed"]))
    elif report and report.get("thawed"):
        message = "the deadline guard thawed {} ({})".format(
            ", ".join(report["thawed"]), report.get("reason"))
    else:
        message = "the session's process ended; nothing was left frozen"
    if errors:
        message += "; errors: " + ", ".join("{}: {}".format(*item) for item in errors.items())
    return message


def reconciled(state, report, thawed, errors, result=RECONCILED, now=None):
    """The finished record of an active session the journal holds whose owner and guard
    are gone. `result`: RECONCILED after a crash, THAWED when `xe-quiesce thaw` had the
    guard thaw it and this only closes the books."""
    record = SessionRecord(state)
    record.finish(result, reconcile_message(report, thawed, errors), guard=report, now=now)
    return record
