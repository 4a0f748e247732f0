"""Expedited RCU grace periods for the moment of the freeze (/sys/kernel/rcu_expedited).

Why: a FIFREEZE of a clean filesystem is mostly waiting. freeze_super() takes the
superblock's three freeze levels one after the other, and each (percpu_down_write ->
rcu_sync_enter) waits for a full RCU grace period; one already under way, started by
whatever freed an inode, a memory mapping or a task just before, must end first. On an
idle 2-core guest at HZ=250 that is nearly all of a clean filesystem's FIFREEZE (24 ms
median, 20-35 ms, for every tool alike: docs/benchmarks.md). With the kernel's
rcu_expedited knob at 1, synchronize_rcu() is expedited (the other CPUs are interrupted
to report a quiescent state instead of being waited for), with the same guarantees, and
that FIFREEZE takes 0.3 ms.

The knob is system-wide, so it is set only around the FIFREEZE calls and only when it is
0 and writable: an admin's 1 is left alone, a read-only /sys (a container) is no
failure, and the kernel's rcu_normal=1 (real-time set-ups) still wins over it. If the
session's process dies in between, the deadline guard writes the 0 back (`restore`).
"""
import os

KNOB = "sys/kernel/rcu_expedited"


class ExpeditedRcu(object):
    """The knob for one session: claimed (or not) when made, before the guard is armed;
    `engage()` and `release()` around the FIFREEZE calls, which do nothing unless `ours`."""

    def __init__(self, wanted=True, root="/"):
        self.path = knob_path(root)
        self.ours = wanted and self._free()
        self.engaged = False

    def _free(self):
        """The knob is 0 and writable: setting it is ours, and so is putting it back."""
        return current(self.path) == "0" and os.access(self.path, os.W_OK)

    def engage(self):
        if self.ours:
            self.engaged = _write(self.path, "1")

    def release(self):
        if self.engaged:
            self.engaged = False
            _write(self.path, "0")


def knob_path(root="/"):
    return os.path.join(root, KNOB)


def current(path):
    """The knob's value ("0", "1"), or None where the kernel has none."""
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def restore(path):
    """Put the knob a dead session engaged back to 0 (the guard, which imports no logging)."""
    _write(path, "0")


def _write(path, value):
    """One write to sysfs; False when the kernel refuses it (nothing to undo then)."""
    try:
        with open(path, "w") as handle:
            handle.write(value)
    except OSError:
        return False
    return True
