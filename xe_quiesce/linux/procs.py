"""Is that process (still) the one we recorded? Shared by the journal, the session and the
guard's owner, so that one rule decides liveness everywhere.

A pid alone may be reused, so a process is recorded with its start time. A zombie has
exited and holds no fds: it counts as gone even before its parent (maybe a late-reaping
init, for the reparented guard) has waited for it.

psutil (1.5 MiB) is imported by the first call, not at load: an idle daemon does not
need it, and the first call is a session's start (its owner's identity), before any
freeze, so nothing is imported inside a frozen window.
"""
import time


def identity(pid):
    """[pid, start time] for the journal."""
    import psutil

    try:
        return [pid, psutil.Process(pid).create_time()]
    except psutil.Error:
        return [pid, None]


def alive(recorded):
    """True if the process recorded as [pid, start time] still runs."""
    if not recorded or recorded[0] is None:
        return False
    pid, started = recorded
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - started) < 0.01
    except psutil.Error:
        return False


def wait_gone(pid, timeout):
    """Wait for a process that is not our child to exit; True once it has."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not alive([pid, None]):
            return True
        time.sleep(0.005)
    return False
