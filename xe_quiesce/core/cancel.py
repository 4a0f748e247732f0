"""Why a quiesce session must be abandoned, set from another thread.

A trigger whose asker can stop waiting (Xen Orchestra's /sync: its timeout, a reset, a
/post-sync that overtakes it) hands the session one of these. The session looks at it
between hooks, while a hook runs, before the FIFREEZEs and right after them: once set,
it freezes nothing more and undoes what it did, so the guest is never frozen for an
asker that is gone. The first reason given is the one recorded.
"""
import threading
import time

from ..errors import QuiesceError
from .record import ABANDONED


class Cancel(object):
    def __init__(self):
        self._lock = threading.Lock()
        self._reason = None
        self.started = time.monotonic()

    def set(self, reason):
        """Ask the session to give up; returns False when it already had a reason."""
        with self._lock:
            if self._reason is not None:
                return False
            self._reason = reason
            return True

    def reason(self):
        """The reason given, or None while the session may go on."""
        return self._reason

    def elapsed(self):
        return time.monotonic() - self.started

    def after(self, seconds, reason):
        """Set `reason` in `seconds` unless cancelled: a started daemon Timer."""
        timer = threading.Timer(max(0.0, seconds), self.set, args=(reason,))
        timer.daemon = True
        timer.start()
        return timer


class AbandonedError(QuiesceError):
    """Raised at a session's cancel point; the session records `result` = abandoned."""

    result = ABANDONED
