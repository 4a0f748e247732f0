"""Logging that cannot deadlock the guest: records wait in memory while anything is frozen.

stderr may be a file on a filesystem we froze (a redirected cron job, a log file), and a
write there blocks until the thaw, which this very process has to do. So while a session
holds filesystems frozen, records go to a bounded buffer and are written after the thaw.
"""
import collections
import logging
import os
import sys
import threading

CAPACITY = 2000


class LogGate(logging.Handler):
    """A handler that passes records to `target`, or buffers them while held."""

    def __init__(self, target, capacity=CAPACITY):
        logging.Handler.__init__(self)
        self.targets = [target]
        self.buffer = collections.deque(maxlen=capacity)
        self.dropped = 0
        self.held = False
        self._gate = threading.Lock()

    def hold(self):
        with self._gate:
            self.held = True

    def resume(self):
        """Open the gate and write what was buffered, oldest first.

        (Not `release`: logging.Handler.handle() calls release() for its own lock.)
        """
        with self._gate:
            self.held = False
            pending, self.buffer = list(self.buffer), collections.deque(maxlen=self.buffer.maxlen)
            dropped, self.dropped = self.dropped, 0
        if dropped:
            self._pass(logging.makeLogRecord({
                "name": __name__, "levelno": logging.WARNING, "levelname": "WARNING",
                "msg": "%d log records were dropped while frozen", "args": (dropped,)}))
        for record in pending:
            self._pass(record)

    def _pass(self, record):
        for target in self.targets:
            target.handle(record)

    def drain(self):
        """Open the gate, returning the buffered records as text instead of writing them.

        For an owner that leaves while still frozen (CLI `freeze`): its stderr may be on
        a frozen filesystem, so the lines go to the journal and `thaw` prints them.
        """
        with self._gate:
            self.held = False
            pending, self.buffer = list(self.buffer), collections.deque(maxlen=self.buffer.maxlen)
            self.dropped = 0
        return [self.targets[0].format(record) for record in pending]

    def emit(self, record):
        with self._gate:
            if self.held:
                if len(self.buffer) == self.buffer.maxlen:
                    self.dropped += 1
                self.buffer.append(record)
                return
        self._pass(record)


_gate = None
# syslog(3) priorities, as the journal reads them from a "<N>" line prefix.
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
              (logging.INFO, 6))
FORMAT = "xe-quiesce: %(levelname)s: %(message)s"


class JournalFormatter(logging.Formatter):
    """Prefix each record with its syslog priority, so `journalctl -p err` finds errors.

    journald reads a leading "<N>" on a stream line as the priority (systemd.exec(5),
    SyslogLevelPrefix=, on by default); without it every line would be "info".
    """

    def format(self, record):
        priority = next((number for level, number in PRIORITIES if record.levelno >= level), 7)
        return "<{}>{}".format(priority, logging.Formatter.format(self, record))


def stderr_is_journal(environ=None, stream=None):
    """True when stderr is the journal stream systemd connected ($JOURNAL_STREAM = dev:ino)."""
    environ = os.environ if environ is None else environ
    stream = sys.stderr if stream is None else stream
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return environ.get("JOURNAL_STREAM") == "{}:{}".format(st.st_dev, st.st_ino)


def setup_logging(verbose=False):
    """Route the package's logs through one gate to stderr (the journal under systemd)."""
    global _gate
    if _gate is None:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(JournalFormatter(FORMAT) if stderr_is_journal()
                            else logging.Formatter(FORMAT))
        _gate = LogGate(stream)
        logger = logging.getLogger("xe_quiesce")
        logger.addHandler(_gate)
        logger.propagate = False
    logging.getLogger("xe_quiesce").setLevel(logging.DEBUG if verbose else logging.INFO)
    return _gate


def add_syslog_when_detached(environ=None):
    """A daemon started by sysvinit or OpenRC has stderr on /dev/null: log to syslog too.

    Under systemd ($JOURNAL_STREAM) stderr already reaches the journal. /dev/log is a
    socket, so this writes nothing to a filesystem.
    """
    environ = os.environ if environ is None else environ
    if environ.get("JOURNAL_STREAM") or sys.stderr.isatty() or not os.path.exists("/dev/log"):
        return False
    import logging.handlers  # only here: under systemd an idle daemon does without it

    try:
        handler = logging.handlers.SysLogHandler(address="/dev/log")
    except OSError:
        return False
    handler.setFormatter(logging.Formatter("xe-quiesce[%(process)d]: %(levelname)s: %(message)s"))
    gate().targets.append(handler)
    return True


def gate():
    """The process's gate (set up on first use)."""
    return _gate or setup_logging()
