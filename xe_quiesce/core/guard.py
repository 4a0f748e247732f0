"""The deadline guard: a separate process that thaws the sessions' filesystems in time.

Why a process and not a thread or a timer: the session's own process may be SIGKILLed,
crash, or sit in an uninterruptible FIFREEZE; a freeze outlives the process that made it.
Why a program of its own, spawned (fork + exec) and never a fork of the caller: the
daemon runs threads (xenstore, the XO listener, the control socket), and a forked child
of a threaded process may inherit a lock another thread held (Python 3.12+ warns).

The daemon starts one guard before any of its threads (`GuardService`) and arms it per
session over a socket: the session's directory fds travel with SCM_RIGHTS, so nothing is
started on the request path and nothing of ours runs beside the first FIFREEZE (a fork
there, with its page-table copy and exit, slowed the kernel's freeze on a 2-core guest).
A guard that dies is started again. Without a daemon (`xe-quiesce freeze` direct, tests)
the session spawns the same program for itself; it outlives the CLI process.

Each armed session is thawed, in reverse plan order, when any of these happens:
- its deadline passes;
- its owner goes away without saying it is done ("owner-exited");
- the guard is asked to thaw now (SIGUSR2, from `xe-quiesce thaw` in another process) or
  told to stop (SIGTERM, SIGINT, SIGHUP, e.g. `systemctl stop` killing the cgroup).
After a thaw it keeps re-thawing while the owner is still connected, so a FIFREEZE that
was stuck in the kernel and completes late is undone too. It writes only its report, into
the run directory (tmpfs, never a planned filesystem), and uses no logging.

The guard's socket (SOCK_SEQPACKET, one message per packet): arming is one or more
packets of JSON, the first with "session", "deadline" (epoch), "report", "count" and, as
its first two fds, the session's own socket and its flags, every packet with "points"
and their fds. The flags are one byte per fd in a shared page (an unlinked file in the
run directory, mapped by both): the owner sets byte i before it freezes fd i and clears
it when fd i is not ours after all (EOPNOTSUPP, tolerated EBUSY, error). A memory write,
so the guard is not woken beside a FIFREEZE; it reads the flags when it acts. One more
byte, after the fds', is set while the owner holds the kernel's rcu_expedited knob at 1
(linux/rcu.py); the header's "rcu" names the knob, and a guard that acts while that byte
is set puts the knob back to 0.
On the session's socket: the guard answers "armed"; the owner sends "D" when it exits on purpose
and leaves the deadline to the guard (CLI freeze), "X" when released (the guard closes
the session's fds, then its end of the socket: the owner sees EOF). The guard exits once
its own socket is closed and no session is left.
"""
import array
import errno
import json
import mmap
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

from ..errors import FreezeError
from ..linux import rcu
from ..linux.fsops import FsOps

START_TIMEOUT = 10.0
RETHAW_INTERVAL = 0.5
THAW_NOW = signal.SIGUSR2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
FDS_PER_PACKET = 32  # 32 paths of PATH_MAX fit a default socket buffer
FIRST_FDS = 2  # the session's socket and its flags
MAX_PACKET = 1 << 18
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# -B -I -S: no .pyc (the root filesystem may be planned), no environment, no site: the
# guard needs the standard library and this package only (its path is given).
_PROGRAM = [sys.executable, "-B", "-I", "-S", "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); "
            "from xe_quiesce.core.guard import main; main(int(sys.argv[2]))"]


def _send(sock, payload, fds):
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([json.dumps(payload).encode()], ancillary)


def _receive(sock):
    """One packet: (payload or None at EOF, fds); a truncated packet raises ValueError."""
    data, ancillary, flags, _ = sock.recvmsg(MAX_PACKET, socket.CMSG_SPACE(
        (FDS_PER_PACKET + FIRST_FDS) * array.array("i").itemsize))
    fds = array.array("i")
    for level, kind, cmsg in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cmsg[:len(cmsg) - len(cmsg) % fds.itemsize])
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise ValueError("truncated guard message")
    return (json.loads(data.decode()) if data else None), list(fds)


class Guard(object):
    """The owner's handle on one armed session."""

    def __init__(self, pid, identity, sock, flags):
        self.pid = pid
        self.identity = identity
        self._sock = sock
        self._flags = flags
        self._lock = threading.Lock()

    @classmethod
    def start(cls, fds, mount_points, deadline, report_path, session_id, service=None,
              rcu_knob=None):
        """Arm a guard for `fds` (in freeze order); returns once it holds them.

        `service` is the daemon's guard; without one, a guard is spawned for this session
        alone (it exits when the session ends). `rcu_knob`: the rcu_expedited file this
        session may set (see `expediting`)."""
        if service is not None:
            return service.arm(fds, mount_points, deadline, report_path, session_id,
                               rcu_knob)
        program = GuardProgram.spawn()
        try:
            return program.arm(fds, mount_points, deadline, report_path, session_id,
                               rcu_knob)
        finally:
            program.close()

    def announce(self, index):
        """Fd `index` is being frozen now. Refused when the guard is gone: its socket
        then reads EOF (a poll of our own end, which does not wake the guard)."""
        with self._lock:
            sock = self._sock
            if sock is None or select.select([sock], [], [], 0)[0]:
                raise FreezeError("the deadline guard is gone; refusing to freeze "
                                  "without it")
            self._flags[index] = 1

    def retract(self, index):
        with self._lock:
            if self._sock is not None:
                self._flags[index] = 0

    def expediting(self, held):
        """The owner holds (True) or gave back (False) the rcu_expedited knob."""
        with self._lock:
            if self._sock is not None:
                self._flags[len(self._flags) - 1] = 1 if held else 0

    def release(self, wait):
        """Everything is thawed by the owner; returns once the guard closed its fds (they
        pin the mounts: an unmount right after the thaw must not find them open)."""
        if self._sock is None:
            return
        try:
            self._sock.send(b"X")
            self._sock.settimeout(wait)
            while self._sock.recv(16):
                pass
        except OSError:
            pass
        self._close()

    def detach(self):
        """The owner leaves on purpose; the guard keeps the deadline alone."""
        if self._sock is not None:
            try:
                self._sock.send(b"D")
            except OSError:
                pass
            self._close()

    def _close(self):
        with self._lock:
            self._sock.close()
            self._sock = None
            self._flags.close()


class GuardProgram(object):
    """One spawned guard process and the socket that arms it."""

    def __init__(self, process, sock):
        self.process = process
        self.sock = sock
        self._identity = None

    @property
    def identity(self):
        """[pid, start time], read at the first session's start, before its freeze: psutil
        is not the idle daemon's memory. The guard is our child: its pid is not reused
        before we have waited for it."""
        if self._identity is None:
            self._identity = _identity(self.process.pid)
        return self._identity

    @classmethod
    def spawn(cls):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = subprocess.Popen(
                _PROGRAM + [_PACKAGE_PARENT, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                cwd="/", start_new_session=True)
        except OSError as error:
            ours.close()
            raise FreezeError("the deadline guard could not be started ({}); nothing was "
                              "frozen".format(error.strerror))
        finally:
            theirs.close()
        return cls(process, ours)

    def arm(self, fds, mount_points, deadline, report_path, session_id, rcu_knob=None):
        mine, guards = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        flags_fd = flags = None
        try:
            flags_fd, flags = _shared_flags(report_path + ".flags", _flags_size(len(fds)))
            header = {"session": session_id, "deadline": deadline, "report": report_path,
                      "count": len(fds), "rcu": rcu_knob}
            for start in range(0, max(len(fds), 1), FDS_PER_PACKET):
                payload = dict(header) if start == 0 else {}
                payload["points"] = list(mount_points[start:start + FDS_PER_PACKET])
                first = [guards.fileno(), flags_fd] if start == 0 else []
                _send(self.sock, payload, first + list(fds[start:start + FDS_PER_PACKET]))
        except OSError as error:
            mine.close()
            if flags is not None:
                flags.close()
            raise FreezeError("the deadline guard cannot be armed ({}); nothing was "
                              "frozen".format(error.strerror))
        finally:
            guards.close()
            if flags_fd is not None:
                os.close(flags_fd)
        ready, _, _ = select.select([mine], [], [], START_TIMEOUT)
        answer = mine.recv(16) if ready else b""
        if answer != b"armed":
            mine.close()
            flags.close()
            raise FreezeError("the deadline guard did not take the session; nothing was frozen")
        return Guard(self.process.pid, self.identity, mine, flags)

    def close(self):
        """Without its own socket the guard exits once its sessions are over."""
        self.sock.close()


def _flags_size(count):
    """One byte per fd, and the rcu_expedited byte."""
    return count + 1


def _shared_flags(path, size):
    """(fd, mapping) of `size` zero bytes in an unlinked file (the run directory is a
    tmpfs), touched now so that setting a flag never faults a page in."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.unlink(path)
        os.ftruncate(fd, size)
        flags = mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        raise
    flags[0:size] = bytes(size)
    return fd, flags


def _identity(pid):
    from ..linux import procs
    return procs.identity(pid)


class GuardService(object):
    """The daemon's guard: spawned once before the daemon's threads, armed per session,
    started again when it dies (a thread blocked in waitpid notices, with no wake-ups)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._program = None
        self._stopping = False

    @property
    def identity(self):
        program = self._program
        return program.identity if program else None

    def start(self):
        with self._lock:
            self._program = self._spawn()

    def _spawn(self):
        program = GuardProgram.spawn()
        threading.Thread(target=self._watch, args=(program,), name="xe-quiesce-guard",
                         daemon=True).start()
        return program

    def _watch(self, program):
        program.process.wait()
        with self._lock:
            if self._program is program and not self._stopping:
                program.close()
                try:
                    self._program = self._spawn()
                except FreezeError:
                    self._program = None  # the next session tries again, and says why

    def arm(self, fds, mount_points, deadline, report_path, session_id, rcu_knob=None):
        with self._lock:
            if self._program is None:
                self._program = self._spawn()
            program = self._program
        return program.arm(fds, mount_points, deadline, report_path, session_id, rcu_knob)

    def stop(self):
        """Close the guard's socket: it exits once its sessions are over."""
        with self._lock:
            self._stopping = True
            if self._program is not None:
                self._program.close()


def request_thaw(pid):
    """Ask a guard (maybe of a detached CLI freeze) to thaw now. False if it is gone."""
    try:
        os.kill(pid, THAW_NOW)
    except ProcessLookupError:
        return False
    return True


# -- the guard program itself ------------------------------------------------------


class _Armed(object):
    """One session the guard holds."""

    def __init__(self, header, sock, flags, fds, points):
        self.session_id = header["session"]
        self.deadline = time.monotonic() + (header["deadline"] - time.time())
        self.report_path = header["report"]
        self.rcu_knob = header.get("rcu")
        self.sock = sock
        self.flags = flags
        self.fds = fds
        self.points = points
        self.owner_open = True
        self.detached = False
        self.report = None
        self.recheck_at = None  # set once the guard thawed: re-thaw while the owner lives

    def timer(self):
        if self.recheck_at is None:
            return self.deadline
        return self.recheck_at if self.owner_open and not self.detached else None

    def announced(self):
        return [index for index in range(len(self.fds)) if self.flags[index]]

    def restore_rcu(self):
        """The owner still holds rcu_expedited at 1 and we are acting for it: put it back."""
        if self.rcu_knob and self.flags[len(self.fds)]:
            rcu.restore(self.rcu_knob)
            self.flags[len(self.fds)] = 0

    def close(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        self.flags.close()
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class GuardProcess(object):
    """Runs only in the guard program: serves its socket until it and every session end."""

    def __init__(self, sock):
        self.sock = sock
        self.ops = FsOps()
        self.sessions = []
        self.signals = []

    def run(self):
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for signum in STOP_SIGNALS + (THAW_NOW,):
            signal.signal(signum, self._on_signal)
        while self.sock is not None or self.sessions:
            self._step(wake_r)

    def _on_signal(self, signum, _frame):
        self.signals.append(signum)

    def _step(self, wake_r):
        self._take_signals()
        now = time.monotonic()
        for armed in list(self.sessions):
            when = armed.timer()
            if when is not None and when <= now:
                self._thaw(armed, "deadline" if armed.recheck_at is None else "recheck")
            if armed.timer() is None:  # thawed, and its owner is gone or detached
                self._drop(armed)
        if self.sock is None and not self.sessions:
            return
        timers = [armed.timer() for armed in self.sessions]
        watched = [wake_r] + ([self.sock] if self.sock is not None else []) + [
            armed.sock for armed in self.sessions if armed.sock is not None]
        timeout = max(0.0, min(timers) - time.monotonic()) if timers else None
        try:
            ready, _, _ = select.select(watched, [], [], timeout)
        except InterruptedError:
            return
        if wake_r in ready:
            os.read(wake_r, 64)
        if self.sock is not None and self.sock in ready:
            self._arm()
        for armed in list(self.sessions):
            if armed.sock is not None and armed.sock in ready:
                self._owner_says(armed)

    def _take_signals(self):
        while self.signals:
            signum = self.signals.pop(0)
            reason = "thaw requested" if signum == THAW_NOW else \
                "stopped by signal {}".format(signum)
            if signum != THAW_NOW and self.sock is not None:
                self.sock.close()  # stopping: no new sessions
                self.sock = None
            for armed in list(self.sessions):
                self._thaw(armed, reason)

    def _arm(self):
        """Read one session's packets; a broken one is refused (its owner sees EOF)."""
        sock, flags, fds, points = None, None, [], []
        try:
            header, received = _receive(self.sock)
            if header is None:
                self.sock.close()
                self.sock = None
                return
            fds = received  # closed below if anything is wrong
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fds.pop(0))
            flags_fd = fds.pop(0)
            try:
                flags = mmap.mmap(flags_fd, _flags_size(header["count"]))
            finally:
                os.close(flags_fd)
            points = list(header["points"])
            while len(fds) < header["count"]:
                more, received = _receive(self.sock)
                fds += received
                if more is None:
                    raise ValueError("the owner left while arming")
                points += more["points"]
            if len(fds) != header["count"] or len(points) != len(fds):
                raise ValueError("fds and mount points do not match")
            sock.send(b"armed")
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            for fd in fds:
                os.close(fd)
            if flags is not None:
                flags.close()
            if sock is not None:
                sock.close()
            return
        self.sessions.append(_Armed(header, sock, flags, fds, points))

    def _owner_says(self, armed):
        try:
            data = armed.sock.recv(4096)
        except OSError:
            data = b""
        if not data:
            armed.owner_open = False
            armed.sock.close()
            armed.sock = None
            if not armed.detached and armed.recheck_at is None:
                self._thaw(armed, "owner-exited")
            return
        if data == b"D":
            armed.detached = True
        elif data == b"X":
            self._drop(armed)

    def _drop(self, armed):
        armed.close()
        self.sessions.remove(armed)

    def _thaw(self, armed, reason):
        armed.recheck_at = time.monotonic() + RETHAW_INTERVAL
        if armed.report is None:
            armed.report = {"session": armed.session_id, "reason": reason, "at": time.time(),
                            "thawed": [], "not_frozen": [], "errors": {}}
        report = armed.report
        acted = False
        for index in reversed(armed.announced()):
            point = armed.points[index]
            try:
                if self.ops.thaw(armed.fds[index]):
                    acted = True
                    if point not in report["thawed"]:
                        report["thawed"].append(point)
                elif point not in report["thawed"] + report["not_frozen"]:
                    report["not_frozen"].append(point)
            except OSError as error:
                report["errors"][point] = errno.errorcode.get(error.errno, str(error.errno))
        armed.restore_rcu()  # after the thaws: nothing comes before them
        if acted or reason != "recheck":
            _write_report(armed.report_path, report)


def _write_report(path, report):
    tmp = "{}.{}.tmp".format(path, os.getpid())
    try:
        with open(tmp, "w") as handle:
            json.dump(report, handle)
        os.replace(tmp, path)
    except OSError:
        pass


def main(fd):
    """The guard program's entry point (see _PROGRAM): serve the inherited socket."""
    GuardProcess(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fd)).run()
