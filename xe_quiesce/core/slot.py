"""One quiesce session at a time across the daemon's triggers, and who may end it.

The journal already refuses a second session while one is live, whoever asked; this
class adds what a held session needs inside the daemon: the session object itself, so
that a later request (XO's /post-sync, the CLI's thaw over the control socket) can thaw
it, and a timer that closes it at its deadline (the guard process thaws at the same
moment in any case; the timer runs the hooks' thaw and records the outcome).
The xenstore conversation holds its session itself and never parks it here.
"""
import logging
import threading

from ..errors import BusyError
from .session import QuiesceSession, busy_message

log = logging.getLogger(__name__)


class SessionHolder(object):
    def __init__(self, config, session_factory=QuiesceSession):
        self.config = config
        self.session_factory = session_factory
        self._lock = threading.Lock()
        self._held = None
        self._timer = None

    def held_trigger(self):
        held = self._held
        return held.trigger if held else None

    def freeze(self, trigger, timeout=None, cancel=None):
        """Start a session for `trigger` and keep it until thaw() or its deadline.

        The slot is reserved before the (possibly long) hooks run, so a second request
        is refused at once instead of queueing behind them. `cancel` (a cancel.Cancel)
        lets the trigger abandon the session while it quiesces.
        """
        with self._lock:
            if self._held is not None:
                raise BusyError(self._busy(self._held))
            session = self._held = self.session_factory(self.config, trigger)
            session.cancel = cancel
        try:
            summary = session.start(timeout)
        except BaseException:
            with self._lock:
                self._held = None
            raise
        with self._lock:
            self._timer = threading.Timer(max(0.0, session.remaining()), self._expire,
                                          args=(session,))
            self._timer.daemon = True
            self._timer.start()
        return summary

    def quiescing_under(self, cancel):
        """Whether the held session is still quiescing with `cancel` as its cancel."""
        with self._lock:
            held = self._held
            return held is not None and self._timer is None and held.cancel is cancel

    @staticmethod
    def _busy(session):
        if session.state is None or session.state.get("status") == "quiescing":
            return "a {} session is starting".format(session.trigger)
        return busy_message(session.state)

    def thaw(self, trigger, may_thaw=None):
        """Thaw the held session; None when nothing is held.

        `may_thaw` lists the triggers whose sessions this request may end (XO may end
        only its own; the admin's CLI may end any the daemon holds).
        """
        with self._lock:
            session = self._held
            if session is None:
                return None
            if self._timer is None:
                raise BusyError(self._busy(session))
            if may_thaw is not None and session.trigger not in may_thaw:
                raise BusyError(self._busy(session) + "; it is not {}'s to thaw".format(trigger))
            return self._end(session)

    def _expire(self, session):
        with self._lock:
            if self._held is session:
                summary = self._end(session)
                log.warning("%s session %s reached its deadline: %s", session.trigger,
                            session.session_id, summary["result"])

    def _end(self, session):
        self._timer.cancel()
        self._held = self._timer = None
        return session.thaw()

    def shutdown(self):
        """Thaw whatever is held (daemon stopping)."""
        with self._lock:
            if self._held is not None and self._timer is not None:
                self._end(self._held)
