"""The daemon's freeze plan, kept warm between requests and rebuilt only when mounts change.

Discovery reads the mount table and walks sysfs for every mount: tens of milliseconds at
32 filesystems, which a request would otherwise pay before its first FIFREEZE. What a
plan depends on changes only with the mount table (the configuration is fixed for the
daemon's life; a block stack under a mounted filesystem does not change while mounted),
and the kernel says when the table changed: an open /proc/self/mountinfo polls
POLLPRI|POLLERR once after each mount, unmount or remount. So a request costs one poll()
with a zero timeout. The freezer still proves each fd reaches a planned mount (mount
ids), so even a change that races the request freezes nothing it should not.
"""
import os
import select
import threading

CHANGED = select.POLLPRI | select.POLLERR


class WarmPlan(object):
    """A callable returning the current plan; `build()` makes one (session.make_plan)."""

    def __init__(self, build, root="/"):
        self._build = build
        self._lock = threading.Lock()
        self._plan = None
        self._fd = os.open(os.path.join(root, "proc/self/mountinfo"),
                           os.O_RDONLY | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._fd, CHANGED)

    def _changed(self):
        """True once per change of the mount table since the last call (the kernel marks
        the change seen as it answers the poll)."""
        return any(events & CHANGED for _, events in self._poll.poll(0))

    def __call__(self):
        with self._lock:
            # Polled before building: a change during the build is seen next time.
            if self._changed() or self._plan is None:
                self._plan = None
                self._plan = self._build()
            return self._plan

    def close(self):
        os.close(self._fd)
