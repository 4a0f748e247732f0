"""`xe-quiesce frozen -- COMMAND`: freeze, run COMMAND, thaw the moment it exits.

What backup scripts want, without a second process start-up inside the frozen window
(`freeze` then `thaw`). Its rules:
- everything the window needs (subprocess, selectors, signal handlers, the session
  modules when there is no daemon) is loaded and set up before the freeze;
- the thaw waits for nothing but COMMAND's exit or the deadline; at the deadline COMMAND
  gets SIGTERM, the thaw follows at once, SIGKILL after GRACE seconds;
- COMMAND's output does not reach a frozen filesystem behind the admin's back: its
  stdout and stderr are pipes of ours, written through at once when our own stream is a
  terminal (or another character device) or a file on a filesystem not frozen, kept in
  memory otherwise (a pipe or socket may be read by something writing to a frozen
  filesystem; a file on one would block) and written after the thaw. --direct-output
  hands COMMAND our streams instead.
"""
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import time

import click

from ..config import load_config, session_timeout
from ..core.hooks import hook_environment
from ..core.record import DEADLINE_THAWED, THAWED
from ..errors import QuiesceError, require_root
from ..triggers import control
from .fast import CONTROL_MARGIN
from .options import config_option, journal_for, on_frozen_file

# Seconds between SIGTERM and SIGKILL for a command that outlived the deadline.
GRACE = 5.0
# Output kept per stream while frozen; beyond it COMMAND waits on its own write.
BUFFER_LIMIT = 64 << 20
CHUNK = 65536
# Our exit status when the deadline ended COMMAND (as timeout(1)).
DEADLINE_STATUS = 124
NOT_FOUND_STATUS = 127
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class DaemonHold(object):
    """The freeze held by the running daemon, asked over the control socket."""

    def __init__(self, config):
        self.run_dir = config.state.run_dir
        self.max_frozen = config.freeze.max_frozen

    def start(self, timeout):
        return control.request(self.run_dir, "freeze", self.max_frozen + CONTROL_MARGIN,
                               timeout=timeout)

    def thaw(self):
        return control.request(self.run_dir, "thaw", CONTROL_MARGIN)


class DirectHold(object):
    """No daemon: this process holds the session, as `freeze` without one does."""

    def __init__(self, config):
        from ..core.session import QuiesceSession  # before anything freezes
        from ..protocol import CLI

        self.session = QuiesceSession(config, CLI, journal=journal_for(config))

    def start(self, timeout):
        return self.session.start(timeout)

    def thaw(self):
        return self.session.thaw()


class Relay(object):
    """One of COMMAND's output streams: a pipe we read, our stream we write to."""

    def __init__(self, target, live):
        self.target = target
        self.live = live
        self.pending = []
        self.size = 0

    def feed(self, data):
        if self.live:
            _write_all(self.target, data)
        else:
            self.pending.append(data)
            self.size += len(data)

    def full(self):
        return self.size >= BUFFER_LIMIT

    def flush(self):
        """After the thaw: write what was kept, and from now on write through."""
        for data in self.pending:
            _write_all(self.target, data)
        self.pending, self.size, self.live = [], 0, True


def _write_all(fd, data):
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:  # our reader went away (EPIPE): COMMAND's output has nowhere to go
        pass


def _live_while_frozen(stream, mount_points):
    """Whether a write to `stream` cannot wait for the thaw: a terminal or other
    character device, or a regular file on a filesystem not frozen."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (AttributeError, OSError, ValueError):
        return False
    if stat.S_ISCHR(mode):
        return True
    return stat.S_ISREG(mode) and not on_frozen_file(stream, mount_points)


class Window(object):
    """COMMAND's run while frozen: started, watched and ended from one select loop.

    SIGCHLD and the ending signals wake the loop through a pipe (signal.set_wakeup_fd),
    so COMMAND's exit is seen at once without polling.
    """

    def __init__(self, argv, direct_output):
        self.argv = argv
        self.direct_output = direct_output
        self.child = None
        self.relays = {}
        self.signalled = None
        self.selector = selectors.DefaultSelector()
        self.wake_read, self.wake_write = os.pipe()
        for fd in (self.wake_read, self.wake_write):
            os.set_blocking(fd, False)
        self.selector.register(self.wake_read, selectors.EVENT_READ)
        self.previous = {sig: signal.signal(sig, self._on_signal)
                         for sig in (signal.SIGCHLD,) + ENDING_SIGNALS}
        self.previous_wakeup = signal.set_wakeup_fd(self.wake_write)

    def _on_signal(self, signum, _frame):
        if signum != signal.SIGCHLD and self.signalled is None:
            self.signalled = signum

    def start(self, env, mount_points):
        pipe = None if self.direct_output else subprocess.PIPE
        self.child = subprocess.Popen(self.argv, env=env, stdout=pipe, stderr=pipe)
        if not self.direct_output:
            for pipe_file, stream in ((self.child.stdout, sys.stdout),
                                      (self.child.stderr, sys.stderr)):
                relay = Relay(stream.fileno(), _live_while_frozen(stream, mount_points))
                self.relays[pipe_file.fileno()] = relay
                self.selector.register(pipe_file.fileno(), selectors.EVENT_READ)

    def wait(self, deadline):
        """Relay output until COMMAND exits, a signal ends us, or `deadline` (time.time())
        passes; returns True when COMMAND has exited."""
        while self.child.poll() is None and self.signalled is None:
            left = deadline - time.time()
            if left <= 0:
                return False
            self._pump(left)
        return self.child.returncode is not None

    def _pump(self, timeout):
        for key, _ in self.selector.select(timeout):
            fd = key.fd
            if fd == self.wake_read:
                _drain(fd)
                continue
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                continue
            relay = self.relays[fd]
            if not data:
                self.selector.unregister(fd)
            else:
                relay.feed(data)
                if relay.full():  # COMMAND waits on its write until the thaw
                    self.selector.unregister(fd)

    def end(self, signum):
        """Tell COMMAND to stop (it outlived the deadline, or we were told to stop)."""
        if self.child.poll() is None:
            self.child.send_signal(signum)

    def finish(self, grace):
        """After the thaw: write what was kept, relay until COMMAND exits (SIGKILL after
        `grace` seconds when it was told to stop), then what its pipes still hold."""
        for fd, relay in self.relays.items():
            relay.flush()
            if fd not in self.selector.get_map():
                self.selector.register(fd, selectors.EVENT_READ)
        killed = False
        if grace is not None:
            limit = time.time() + grace
            while self.child.poll() is None and time.time() < limit:
                self._pump(limit - time.time())
            if self.child.poll() is None:
                self.child.kill()
                killed = True
        while self.child.poll() is None:
            self._pump(None)
        # A child of COMMAND may keep the pipes open: take what is there, do not wait.
        while len(self.selector.get_map()) > 1 and self.selector.select(0):
            self._pump(0)
        return killed

    def close(self):
        signal.set_wakeup_fd(self.previous_wakeup)
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.selector.close()
        for fd in (self.wake_read, self.wake_write):
            os.close(fd)
        if self.child is not None:
            for pipe_file in (self.child.stdout, self.child.stderr):
                if pipe_file is not None:
                    pipe_file.close()


def _drain(fd):
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def exit_status(returncode):
    """The shell's convention: the exit code, or 128 + the signal that ended it."""
    return 128 - returncode if returncode < 0 else returncode


@click.command(context_settings={"allow_interspersed_args": False})
@config_option
@click.option("--timeout", type=float, metavar="S",
              help="Thaw after S seconds even if COMMAND still runs (SIGTERM, SIGKILL after "
                   "{:g} s; default: [freeze] max-frozen).".format(GRACE))
@click.option("--direct-output", is_flag=True,
              help="COMMAND writes to our standard output and error itself, even when they "
                   "are on a filesystem now frozen (its writes then wait for the thaw).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def frozen(config_file, timeout, direct_output, command):
    """Freeze, run COMMAND while everything is frozen, thaw the moment it exits.

    Exits with COMMAND's status (128 + N when signal N ended it), 124 when it outlived
    the deadline, 127 when it cannot be found. COMMAND gets the hooks' XE_QUIESCE_*
    variables. Options after COMMAND are its own; `--` may separate them.
    """
    require_root()
    config = load_config(config_file)
    timeout = session_timeout(timeout, config.freeze.max_frozen, "--timeout")
    argv = list(command)
    if os.sep not in argv[0] and shutil.which(argv[0]) is None:
        click.echo("xe-quiesce: {}: command not found (nothing frozen)".format(argv[0]),
                   err=True)
        sys.exit(NOT_FOUND_STATUS)
    window = Window(argv, direct_output)
    try:
        sys.exit(_run(config, window, timeout))
    finally:
        window.close()


def _freeze(config, timeout):
    """(hold, summary): through the daemon when it runs, else by this process."""
    hold = DaemonHold(config)
    try:
        return hold, hold.start(timeout)
    except control.NoDaemon:
        hold = DirectHold(config)
        return hold, hold.start(timeout)


def _run(config, window, timeout):
    hold, summary = _freeze(config, timeout)
    try:
        # Inside the try: whatever fails once frozen thaws now, not at the guard's deadline.
        env = dict(os.environ, **hook_environment(summary["session"], summary["trigger"],
                                                  summary["deadline"], summary["frozen"]))
        try:
            window.start(env, summary["frozen"])
        except OSError as error:
            raise QuiesceError("{}: {} (thawed)".format(window.argv[0], error.strerror))
        exited = window.wait(summary["deadline"])
        if not exited:
            window.end(window.signalled or signal.SIGTERM)
    finally:
        closed = hold.thaw()
    for line in (closed or {}).get("deferred_log", []):
        click.echo(line, err=True)
    # At the deadline the guard thaws at the same moment as we do ("deadline-thawed").
    expected = (THAWED,) if exited else (THAWED, DEADLINE_THAWED)
    if closed and closed.get("result") not in expected:
        click.echo("xe-quiesce: {}: {}".format(closed["result"], closed.get("message")),
                   err=True)
    if exited:
        window.finish(None)
        return exit_status(window.child.returncode)
    killed = window.finish(GRACE)
    if window.signalled is not None:
        return 128 + window.signalled
    click.echo("xe-quiesce: {} outlived the deadline: thawed, sent SIGTERM{}".format(
        window.argv[0], ", then SIGKILL after {:g} s".format(GRACE) if killed else ""),
        err=True)
    return DEADLINE_STATUS
