"""The deadline guard: a separate process that thaws the session's filesystems in time.

Why a process and not a thread or a timer: the session's own process may be SIGKILLed,
crash, or sit in an uninterruptible FIFREEZE; a freeze outlives the process that made it.
The guard is forked (double fork, own session) before the first FIFREEZE, holds the
session's directory fds, and thaws them in reverse plan order when any of these happens:

- the deadline passes;
- the session's process goes away without saying it is done ("owner-exited");
- it is asked to thaw now (SIGUSR2, from `xe-quiesce thaw` in another process) or told to
  stop (SIGTERM, SIGINT, SIGHUP, e.g. `systemctl stop` killing the service's cgroup).

SIGUSR1 or an "X" message means the session thawed everything itself: exit untouched.
After a deadline thaw it keeps re-thawing while the owner still lives, so a FIFREEZE that
was stuck in the kernel and completes late is undone too. It writes only its report, into
the run directory (tmpfs, never a planned filesystem), and uses no logging: a lock held
by another thread at fork time would never be released in the child.

Messages on the pipe, one per line: "A<i>" freezing fd i now, "R<i>" fd i is not ours
after all (EOPNOTSUPP, tolerated EBUSY, error), "D" the owner exits on purpose and leaves
the deadline to the guard (CLI freeze), "X" released.
"""
import errno
import json
import os
import select
import signal
import time

from .errors import FreezeError
from .fsops import FsOps

START_TIMEOUT = 5.0
RETHAW_INTERVAL = 0.5
THAW_NOW = signal.SIGUSR2
RELEASE = signal.SIGUSR1


class Guard(object):
    """The owner's handle on a running guard."""

    def __init__(self, pid, pipe):
        self.pid = pid
        self._pipe = pipe

    @classmethod
    def start(cls, fds, mount_points, deadline, report_path, session_id, ops=None):
        """Fork the guard for `fds` (in freeze order); returns once it is armed."""
        msg_r, msg_w = os.pipe()
        ready_r, ready_w = os.pipe()
        child = os.fork()
        if child == 0:
            code = 1
            try:
                os.setsid()
                if os.fork() == 0:
                    os.close(msg_w)
                    os.close(ready_r)
                    _GuardProcess(fds, mount_points, deadline, report_path, session_id,
                                  msg_r, ready_w, ops or FsOps()).run()
                code = 0
            finally:
                os._exit(code)
        os.close(msg_r)
        os.close(ready_w)
        os.waitpid(child, 0)
        try:
            pid = _read_pid(ready_r, START_TIMEOUT)
        finally:
            os.close(ready_r)
        if pid is None:
            os.close(msg_w)
            raise FreezeError("the deadline guard did not start; nothing was frozen")
        return cls(pid, msg_w)

    def _send(self, message):
        try:
            os.write(self._pipe, message)
        except OSError as error:
            raise FreezeError("the deadline guard is gone ({}); refusing to freeze "
                              "without it".format(error.strerror))

    def announce(self, index):
        self._send(b"A%d\n" % index)

    def retract(self, index):
        self._send(b"R%d\n" % index)

    def release(self):
        """Everything is thawed by the owner: the guard exits without acting."""
        self._close(b"X\n")

    def detach(self):
        """The owner leaves on purpose; the guard keeps the deadline alone."""
        self._close(b"D\n")

    def _close(self, message):
        if self._pipe is None:
            return
        try:
            os.write(self._pipe, message)
        except OSError:
            pass
        os.close(self._pipe)
        self._pipe = None


def _read_pid(fd, timeout):
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return None
    data = os.read(fd, 64)
    return int(data) if data.strip().isdigit() else None


def request_thaw(pid):
    """Ask a guard (maybe of a detached CLI freeze) to thaw now. False if it is gone."""
    try:
        os.kill(pid, THAW_NOW)
    except ProcessLookupError:
        return False
    return True


class _GuardProcess(object):
    """Runs only in the forked guard; never returns to the caller's code."""

    def __init__(self, fds, mount_points, deadline, report_path, session_id, msg_r, ready_w,
                 ops):
        self.fds = list(fds)
        self.mount_points = list(mount_points)
        self.deadline = time.monotonic() + (deadline - time.time())
        self.report_path = report_path
        self.session_id = session_id
        self.msg_r = msg_r
        self.ready_w = ready_w
        self.ops = ops
        self.announced = set()
        self.signals = []
        self.owner_open = True
        self.detached = False
        self.report = None

    def run(self):
        self._isolate()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, THAW_NOW, RELEASE):
            signal.signal(signum, self._on_signal)
        os.write(self.ready_w, str(os.getpid()).encode())
        os.close(self.ready_w)
        reason = self._wait(wake_r)
        if reason is None:
            return
        self._thaw(reason)
        while self.owner_open and not self.detached:
            reason = self._wait(wake_r, until=time.monotonic() + RETHAW_INTERVAL)
            if reason is None:
                return
            self._thaw(reason)

    def _isolate(self):
        """Keep only the fds the guard needs: an inherited listening socket or xenstore
        connection must not outlive a crashed daemon in here."""
        keep = set(self.fds) | {self.msg_r, self.ready_w}
        null = os.open(os.devnull, os.O_RDWR)
        for std in (0, 1, 2):
            os.dup2(null, std)
        os.close(null)
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _on_signal(self, signum, _frame):
        self.signals.append(signum)

    def _wait(self, wake_r, until=None):
        """Block until something calls for a thaw; None when released (exit quietly)."""
        while True:
            if self.signals:
                signum = self.signals.pop(0)
                if signum == RELEASE:
                    return None
                if signum == THAW_NOW:
                    return "thaw requested"
                return "stopped by signal {}".format(signum)
            limit = self.deadline if until is None else until
            remaining = limit - time.monotonic()
            if remaining <= 0:
                return "deadline" if until is None else "recheck"
            watched = [wake_r] + ([self.msg_r] if self.owner_open else [])
            try:
                ready, _, _ = select.select(watched, [], [], remaining)
            except InterruptedError:
                continue
            if wake_r in ready:
                os.read(wake_r, 64)
            if self.msg_r in ready:
                data = os.read(self.msg_r, 4096)
                if not data:
                    self.owner_open = False
                    os.close(self.msg_r)
                    if not self.detached:
                        return "owner-exited"
                elif self._handle(data):
                    return None

    def _handle(self, data):
        """Apply owner messages; True when the owner released the guard."""
        for line in data.split(b"\n"):
            if line.startswith(b"A"):
                self.announced.add(int(line[1:]))
            elif line.startswith(b"R"):
                self.announced.discard(int(line[1:]))
            elif line == b"D":
                self.detached = True
            elif line == b"X":
                return True
        return False

    def _thaw(self, reason):
        if self.report is None:
            self.report = {"session": self.session_id, "reason": reason,
                           "at": time.time(), "thawed": [], "not_frozen": [], "errors": {}}
        acted = False
        for index in sorted(self.announced, reverse=True):
            point = self.mount_points[index]
            try:
                if self.ops.thaw(self.fds[index]):
                    acted = True
                    if point not in self.report["thawed"]:
                        self.report["thawed"].append(point)
                elif point not in self.report["thawed"] + self.report["not_frozen"]:
                    self.report["not_frozen"].append(point)
            except OSError as error:
                self.report["errors"][point] = errno.errorcode.get(error.errno, str(error.errno))
        if acted or reason != "recheck":
            self._write_report()

    def _write_report(self):
        tmp = "{}.{}.tmp".format(self.report_path, os.getpid())
        try:
            with open(tmp, "w") as handle:
                json.dump(self.report, handle)
            os.replace(tmp, self.report_path)
        except OSError:
            pass
