"""One quiesce session: hooks -> freeze -> hold under a deadline -> thaw -> undo hooks.

Every trigger (xenstore, Xen Orchestra's hook, the CLI) runs exactly this; the session
knows nothing of who asked. Its safety rules:
- the deadline is fixed before anything runs, covers the hooks, and is enforced by the
  guard process, which is armed before the first FIFREEZE;
- every error path thaws, aborts the hooks that ran, and records the outcome;
- nothing is written to a planned filesystem while frozen: logs wait in memory, the
  journal and guard report live in the run directory, which must not be planned.
"""
import fcntl
import logging
import os
import time
import uuid

from ..errors import BusyError, ConfigError, FreezeError, HookError, QuiesceError
from ..linux import procs
from ..linux.blockdev import BlockTopology
from ..linux.fsops import FsOps
from ..linux.rcu import ExpeditedRcu
from . import logbuffer, record
from .cancel import AbandonedError
from .discovery import discover
from .freezer import FROZEN, THAWED, TOLERATED, UNSUPPORTED, Freezer
from .guard import Guard, request_thaw
from .hooks import HookSet, hook_environment
from .journal import Journal
from .plan import build_plan

GUARD_EXIT_WAIT = 5.0
LOG = logging.getLogger(__name__)
# The level of a session's closing line, by result (others: error).
END_LEVELS = {record.THAWED: logging.INFO, record.DEADLINE_THAWED: logging.WARNING}


def make_plan(config, root="/"):
    """Discover and order what a session of this configuration would freeze."""
    topology = BlockTopology(root=root)
    try:
        discovery = discover(config.freeze, root=root, topology=topology)
    except ConfigError as error:  # "[freeze] mounts: /x is not a mount point"
        raise config.located(error)
    return build_plan(discovery, topology)


def busy_message(state):
    left = state.get("deadline", 0) - time.time()
    return "a {} session ({}) is {}; {:.0f} s left before its deadline".format(
        state.get("trigger"), state.get("session"), state.get("status"), max(0, left))


class RunLock(object):
    """An flock in the run directory, so two processes cannot start sessions at once."""

    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, "lock")

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


class QuiesceSession(object):
    def __init__(self, config, trigger, plan=None, journal=None, ops=None, hooks=None,
                 guards=None, planner=None):
        self.config = config
        self.trigger = trigger
        self.ops = ops or FsOps()
        self.journal = journal or Journal(config.state.run_dir, ops=self.ops)
        self.plan = plan
        # The daemon's always-ready guard (guard.GuardService) and warm plan (a callable
        # returning the current plan); without them each session makes its own.
        self.guards = guards
        self.planner = planner or (lambda: make_plan(self.config))
        # None: the configured hook directory; False: no hooks at all (tests).
        self.hooks = HookSet.load(config) if hooks is None else (hooks or None)
        self.session_id = uuid.uuid4().hex[:12]
        self.state = None  # its record.SessionRecord, from start()
        self.freezer = None
        self.guard = None
        self.hooks_ran = []
        self.gate = logbuffer.gate()
        self.cancel = None  # a cancel.Cancel from a trigger whose asker may stop waiting

    @property
    def deadline(self):
        return self.state["deadline"] if self.state else None

    def start(self, timeout=None):
        """Run hooks and freeze; returns with everything frozen, or raises having undone it."""
        self.journal.ensure_dir()
        with RunLock(self.config.state.run_dir):
            self.journal.reconcile()
            active = self.journal.active()
            if active:
                raise BusyError(busy_message(active))
            if self.plan is None:
                self.plan = self.planner()
            self._refuse_run_dir_on_plan()
            timeout = timeout or self.config.freeze.max_frozen
            now = time.time()
            self.state = record.SessionRecord.begin(
                self.session_id, self.trigger, procs.identity(os.getpid()), now, now + timeout,
                self.guards.identity if self.guards else None)
            self.journal.write(self.state)
        try:
            self._run_freeze_hooks()
            self._cancel_point()
            self._freeze()
            self._cancel_point()  # asked while FIFREEZE ran: _fail thaws
            # Inside the try: a journal that cannot be written after the freeze must
            # thaw now, not leave the guest frozen until the guard's deadline.
            self.state.advance(record.FROZEN, mounts=[
                {"mount_point": s.mount_point, "devno": s.fs.devno,
                 "mount_ids": [e.mount_id for e in s.fs.entries]}
                for s in self.freezer.frozen()])
            self.journal.write(self.state)
        except BaseException as error:
            self._fail(error)
            raise
        return self.summary()

    def _refuse_run_dir_on_plan(self):
        fd = self.ops.open(self.config.state.run_dir)
        try:
            mount_id = self.ops.mount_id(fd)
        finally:
            self.ops.close(fd)
        for fs in self.plan.filesystems:
            if mount_id in {entry.mount_id for entry in fs.entries}:
                raise QuiesceError("[state] run-dir {} is on {}, which would be frozen; use a "
                                   "tmpfs such as /run".format(self.config.state.run_dir,
                                                               fs.mount_point))

    def _run_freeze_hooks(self):
        if self.hooks is None:
            return
        self.hooks_ran = self._freeze_hooks_or_abandon()
        self.state.note(hooks_run=list(self.hooks_ran))
        self.journal.write(self.state)

    def _freeze_hooks_or_abandon(self):
        """The hooks' freeze, stopped (and aborted) as soon as the session is cancelled."""
        try:
            return self.hooks.freeze(self.hook_environment(), self.state["deadline"],
                                     cancelled=self._cancel_reason)
        except HookError as error:
            reason = self._cancel_reason()
            if reason:
                raise AbandonedError("{}; {}".format(reason, error))
            raise

    def _cancel_reason(self):
        return self.cancel.reason() if self.cancel is not None else None

    def _cancel_point(self):
        """Give up here if the trigger's asker stopped waiting (see cancel.py)."""
        reason = self._cancel_reason()
        if reason:
            raise AbandonedError(reason)

    def hook_environment(self):
        return hook_environment(self.session_id, self.trigger, self.state["deadline"],
                                [fs.mount_point for fs in self.plan.filesystems])

    def _freeze(self):
        if time.time() >= self.state["deadline"]:
            raise FreezeError("the session deadline passed before freezing")
        rcu = ExpeditedRcu(wanted=self.config.freeze.expedite_rcu)
        self.freezer = Freezer(self.plan, ops=self.ops,
                               sync_first=self.config.freeze.sync_first,
                               concurrent=self.config.freeze.concurrent,
                               on_ebusy=self.config.freeze.on_ebusy, rcu=rcu)
        self.freezer.open()
        self.freezer.sync()
        self.guard = Guard.start(self.freezer.fds, self.freezer.mount_points,
                                 self.state["deadline"],
                                 self.journal.guard_report_path(self.session_id),
                                 self.session_id, service=self.guards,
                                 rcu_knob=rcu.path if rcu.ours else None)
        if self.state["guard_process"] != self.guard.identity:
            self.state.note(guard_process=self.guard.identity)
            self.journal.write(self.state)
        self.gate.hold()
        self.freezer.freeze(self.guard, self.state["deadline"])

    def _fail(self, error):
        """Undo whatever part of the session ran, then record why it failed (the hooks'
        abort problems are theirs to log, not the session's outcome)."""
        self._undo("abort", lambda problems, _hooks, _report: record.failure_outcome(
            error, problems))

    def _undo(self, hook_step, outcome):
        """Both ends of a session, in their one safe order: thaw, let the guard go, open
        the log gate, close the fds, then the hooks' `hook_step` (abort after a failure,
        thaw after a freeze); record and log how it ended. `outcome(thaw problems, hook
        problems, guard report)` gives its (result, message). Returns the summary."""
        problems = self.freezer.thaw() if self.freezer else []
        self._release_guard()
        self.gate.resume()
        if self.freezer:
            self.freezer.close()
        hook_problems = []
        if self.hooks is not None and self.hooks_ran:
            hook_problems = getattr(self.hooks, hook_step)(self.hooks_ran,
                                                           self.hook_environment())
        report = self.journal.guard_report(self.session_id)
        result, message = outcome(problems, hook_problems, report)
        self.state.finish(result, message, guard=report)
        self.journal.close(self.state)
        summary = self.summary()
        log_session_end(self.state, summary["frozen"])
        return summary

    def _release_guard(self):
        if self.guard is None:
            return
        if self.freezer is not None and self.freezer.stuck():
            # A FIFREEZE is still in the kernel: closing the pipe at exit (or the
            # deadline) lets the guard keep re-thawing until it returns.
            return
        self.guard.release(GUARD_EXIT_WAIT)

    def remaining(self):
        return self.state["deadline"] - time.time()

    def thaw(self):
        """Thaw, release the guard, run the hooks' thaw; returns the session summary."""
        return self._undo("thaw", record.thaw_outcome)

    def detach(self):
        """Leave the filesystems frozen for another process to thaw (CLI `freeze`)."""
        self.state.note(deferred_log=self.gate.drain())
        self.journal.write(self.state)
        self.guard.detach()
        self.freezer.close()

    def summary(self):
        states = self.freezer.states if self.freezer else []
        freeze_starts = [s.freeze_start for s in states if s.freeze_start is not None]
        thaws_done = [s.thawed_at for s in states if s.thawed_at is not None]
        window = (max(thaws_done) - min(freeze_starts)) if freeze_starts and thaws_done else None
        return {
            "session": self.session_id,
            "trigger": self.trigger,
            "result": self.state.get("result") or self.state.get("status"),
            "message": self.state.get("message", ""),
            "deadline": self.state["deadline"],
            "frozen": [s.mount_point for s in states if s.status in (FROZEN, THAWED)],
            "unsupported": [s.mount_point for s in states if s.status == UNSUPPORTED],
            "busy_tolerated": [s.mount_point for s in states if s.status == TOLERATED],
            "hooks": list(self.hooks_ran),
            "window_seconds": window,
        }


def log_session_end(state, frozen):
    """The one line each session leaves: trigger, what froze, for how long, the result.

    Written after the thaw (the log gate is open again), as the journal records it.
    """
    seconds = (state.get("finished") or time.time()) - state["started"]
    LOG.log(END_LEVELS.get(state.get("result"), logging.ERROR),
            "session %s (trigger %s): froze %s; %.2f s from start to end; result %s%s",
            state["session"], state.get("trigger"), " ".join(frozen) or "nothing",
            seconds, state.get("result"),
            ": " + state["message"] if state.get("message") else "")


def thaw_from_journal(journal, hooks=None):
    """`xe-quiesce thaw` without a daemon: have the guard thaw, then close the session.

    The owner of a detached CLI freeze has exited; its guard holds the fds and thaws on
    SIGUSR2. If the guard is gone too, reconcile() thaws from the journal's mount list.
    Returns the closed state, or None when nothing was frozen.
    """
    journal.ensure_dir()
    with RunLock(journal.run_dir):
        state = journal.read()
        if not state or state.get("status") not in record.ACTIVE:
            return None
        if procs.alive(state.get("owner")) and state["owner"][0] != os.getpid():
            raise BusyError(busy_message(state) + "; its owner (pid {}) is running and "
                            "thaws it".format(state["owner"][0]))
        guard = state.get("guard_process")
        if procs.alive(guard):
            request_thaw(guard[0])
            if not procs.wait_gone(guard[0], GUARD_EXIT_WAIT):
                raise QuiesceError("the deadline guard (pid {}) did not finish thawing within "
                                   "{:.0f} s".format(guard[0], GUARD_EXIT_WAIT))
        closed = journal.reconcile(result=record.THAWED)
    if closed:
        log_session_end(closed, [mount["mount_point"] for mount in state.get("mounts", [])])
    if hooks is not None and state.get("hooks_run"):
        hooks.thaw(state["hooks_run"], hook_environment(
            state["session"], state.get("trigger", ""), state["deadline"],
            [mount["mount_point"] for mount in state.get("mounts", [])]))
    return closed
