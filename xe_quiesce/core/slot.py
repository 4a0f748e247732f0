"""The daemon's one session at a time, whichever trigger asks, and who may end it.

Every session the daemon runs takes this slot first: the XO and CLI sessions, which the
slot holds between their freeze and thaw requests (freeze(), thaw(), with a timer that
closes each at its deadline: the guard process thaws at the same moment in any case; the
timer runs the hooks' thaw and records the outcome), and the XAPI trigger's, which its
conversation drives itself (begin(), end()). A request while the slot is taken is
refused here, at once, naming the session that has it; who may end which session is the
one table THAW_POLICY.

Across processes the rule is the journal's: QuiesceSession.start takes the run
directory's RunLock and refuses while journal.active() shows a live session, whoever
owns it (a detached `xe-quiesce freeze`, a restarted daemon's guard still holding).
The slot does not replace that check, every session still passes it; it answers first
for the sessions of this process, and keeps the session object a later request needs.
"""
import logging
import threading

from ..errors import BusyError
from ..protocol import CLI, XAPI, XO
from .hooks import HookSet
from .journal import Journal
from .record import QUIESCING
from .session import busy_message, thaw_from_journal

log = logging.getLogger(__name__)

# Who may end whose session: (asker, owner) -> None when it may, else why not. XO ends
# only what it froze; the admin's CLI ends any other, but never the one the host waits
# on. UNSEEN: not the asker's to know of, its thaw finds nothing frozen (XO's
# /post-sync is about XO's snapshot, which never waits on the host's).
UNSEEN = object()
THAW_POLICY = {
    (XO, XO): None,
    (XO, CLI): "it is not xo's to thaw",
    (XO, XAPI): UNSEEN,
    (CLI, CLI): None,
    (CLI, XO): None,
    (CLI, XAPI): "the host's snapshot is waiting on it",
}
# Who may also end a session the journal shows from a process that is gone: a detached
# CLI freeze, or the session of a daemon that died while its guard still holds it.
THAWS_FROM_JOURNAL = (CLI,)


class SessionSlot(object):
    """`session_factory(trigger, plan=None)` makes a session (the daemon's: with its
    guard and warm plan)."""

    def __init__(self, config, session_factory):
        self.config = config
        self.session_factory = session_factory
        self.journal = Journal(config.state.run_dir)
        self._lock = threading.Lock()
        self._session = None  # the one session of this process, whoever runs it
        self._held = False  # kept here between its trigger's requests (XO, CLI)
        self._timer = None  # a held session's deadline, once it is frozen

    def held_trigger(self):
        """The trigger of the session the slot holds (None for the XAPI trigger's)."""
        with self._lock:
            return self._session.trigger if self._held else None

    def begin(self, trigger, plan=None):
        """Start a session its trigger drives and ends with end(); (session, summary)."""
        session = self._reserve(trigger, plan, cancel=None, held=False)
        return session, self._start(session, None)

    def end(self, session):
        """Thaw a session begun with begin(), and give the slot back."""
        try:
            return session.thaw()
        finally:
            with self._lock:
                if self._session is session:
                    self._session = None

    def freeze(self, trigger, timeout=None, cancel=None):
        """Start a session for `trigger` and hold it until thaw() or its deadline.

        `cancel` (a cancel.Cancel) lets the trigger abandon the session while it quiesces.
        """
        session = self._reserve(trigger, None, cancel, held=True)
        summary = self._start(session, timeout)
        with self._lock:
            self._timer = threading.Timer(max(0.0, session.remaining()), self._expire,
                                          args=(session,))
            self._timer.daemon = True
            self._timer.start()
        return summary

    def _reserve(self, trigger, plan, cancel, held):
        """Take the slot before the (possibly long) hooks run, so that a second request
        is refused at once instead of queueing behind them."""
        with self._lock:
            if self._session is not None:
                raise BusyError(self._busy(self._session))
            session = self._session = self.session_factory(trigger, plan=plan)
            session.cancel = cancel
            self._held = held
        return session

    def _start(self, session, timeout):
        try:
            return session.start(timeout)
        except BaseException:  # the session has undone itself: the slot is free again
            with self._lock:
                self._session, self._held = None, False
            raise

    def quiescing_under(self, cancel):
        """Whether the held session is still quiescing with `cancel` as its cancel."""
        with self._lock:
            return (self._held and self._timer is None and
                    self._session.cancel is cancel)

    def _busy(self, session):
        """The busy text naming `session`: a held one is "starting" until frozen (its
        asker is still waiting on it), the others say what the journal says."""
        state = session.state
        if state is None or (self._held and state.get("status") == QUIESCING):
            return "a {} session is starting".format(session.trigger)
        return busy_message(state)

    def thaw(self, asker):
        """Thaw for `asker` what THAW_POLICY lets it end; the summary (for a session
        the journal shows, its closed state), or None when nothing is frozen for it."""
        with self._lock:
            session = self._session
            why_not = THAW_POLICY[asker, session.trigger] if session else UNSEEN
            if why_not is not UNSEEN:
                if self._held and self._timer is None:  # still quiescing
                    raise BusyError(self._busy(session))
                if why_not is not None:
                    raise BusyError("{}; {}".format(self._busy(session), why_not))
                return self._end(session)
        if asker not in THAWS_FROM_JOURNAL:
            return None
        active = self.journal.active()
        why_not = THAW_POLICY.get((asker, active.get("trigger"))) if active else None
        if why_not is not None:
            raise BusyError("{}; {}".format(busy_message(active), why_not))
        return thaw_from_journal(self.journal, HookSet.load(self.config))

    def _expire(self, session):
        with self._lock:
            if self._session is session:
                summary = self._end(session)
                log.warning("%s session %s reached its deadline: %s", session.trigger,
                            session.session_id, summary["result"])

    def _end(self, session):
        """Close a held session (under the lock: a request meanwhile waits for it)."""
        self._timer.cancel()
        self._session, self._held, self._timer = None, False, None
        return session.thaw()

    def shutdown(self):
        """Thaw whatever is held (daemon stopping; the XAPI trigger has ended its own)."""
        with self._lock:
            if self._held and self._timer is not None:
                self._end(self._session)
