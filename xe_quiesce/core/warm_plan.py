"""The daemon's freeze plan, kept warm between requests and rebuilt only when mounts change.

Discovery reads the mount table and walks sysfs for every mount: tens of milliseconds at
32 filesystems, which a request would otherwise pay before its first FIFREEZE. What a
plan depends on changes only with the mount table (the configuration is fixed for the
daemon's life; a block stack under a mounted filesystem does not change while mounted),
and the kernel says when the table changed: an open /proc/self/mountinfo polls
POLLPRI|POLLERR once after each mount, unmount or remount. So a request costs one poll()
with a zero timeout. After a change the table is read again (a fraction of a
millisecond), and the plan is made again only if the entries it depends on changed
(discovery.plan_inputs): a mount of something no plan would take (a tmpfs, a filesystem
not listed in [freeze] mounts) costs no rebuild. The freezer still proves each fd reaches
a planned mount (mount ids), so even a change that races the request freezes nothing it
should not.
"""
import os
import select
import threading

CHANGED = select.POLLPRI | select.POLLERR


class WarmPlan(object):
    """A callable returning the current plan; `build()` makes one (session.make_plan),
    `inputs()` returns what it depends on (discovery.plan_inputs of the mount table)."""

    def __init__(self, build, inputs, root="/"):
        self._build = build
        self._inputs = inputs
        self._lock = threading.Lock()
        self._plan = None
        self._built_from = None
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
            # Polled and read before building: a change during the build is seen next time.
            if self._changed() or self._plan is None:
                inputs = self._inputs()
                if self._plan is None or inputs != self._built_from:
                    self._plan = None
                    self._plan = self._build()
                    self._built_from = inputs
            return self._plan

    def close(self):
        os.close(self._fd)
