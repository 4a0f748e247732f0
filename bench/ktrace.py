"""The kernel's ruler: every FIFREEZE and FITHAW as the syscall tracepoints see them.

The same clock for every tool, whatever it reports about itself: a private tracefs
instance (/sys/kernel/tracing/instances/<name>, so nobody else's tracing is touched)
records sys_enter_ioctl filtered on the two commands and sys_exit_ioctl, for the bench
process and everything it forks from then on (set_event_pid + the event-fork option:
the daemons, their threads and deadline guards, the CLI processes, qemu-ga, fsfreeze).
An exit has no command field, so it is paired with the same thread's pending enter.
trace_clock is `mono`, CLOCK_MONOTONIC: the timestamps compare with the bench's own
time.monotonic(). After each run the bench takes the events and clears the buffer.
"""
import os
import re

from xe_quiesce.linux.fsops import FIFREEZE, FITHAW

TRACEFS = "/sys/kernel/tracing"
EVENTS = ("syscalls/sys_enter_ioctl", "syscalls/sys_exit_ioctl")
NAMES = {FIFREEZE: "freeze", FITHAW: "thaw"}
BUFFER_KB = 4096
LINE = re.compile(r"^\s*(?P<comm>.*)-(?P<tid>\d+)\s+\[\d+\]\s+\S+\s+(?P<ts>\d+\.\d+): "
                  r"sys_ioctl(?:\((?P<args>[^)]*)\)| -> (?P<ret>0x[0-9a-f]+))")
CMD = re.compile(r"cmd: (0x)?(?P<cmd>[0-9a-f]+)")


def _write(path, text):
    with open(path, "w") as handle:
        handle.write(text)


def unavailable_reason(root=TRACEFS):
    """None when syscall tracepoints can be used (tracefs mounted here first if it is
    not), else why not."""
    if os.geteuid() != 0:
        return "not root"
    if not os.path.exists(os.path.join(root, "instances")):
        try:
            os.makedirs(root, exist_ok=True)
            os.spawnvp(os.P_WAIT, "mount", ["mount", "-t", "tracefs", "nodev", root])
        except OSError as error:
            return "cannot mount tracefs on {}: {}".format(root, error)
    for event in EVENTS:
        if not os.path.exists(os.path.join(root, "events", event)):
            return "no {} tracepoint (kernel without CONFIG_FTRACE_SYSCALLS?)".format(event)
    return None


class KernelTrace(object):
    def __init__(self, name, root=TRACEFS):
        self.path = os.path.join(root, "instances", name)

    def start(self, pid=None):
        os.mkdir(self.path)
        try:
            _write(self.file("trace_clock"), "mono")
            _write(self.file("buffer_size_kb"), str(BUFFER_KB))
            _write(self.file("options/event-fork"), "1")
            _write(self.file("set_event_pid"), str(pid or os.getpid()))
            _write(self.file("events", EVENTS[0], "filter"), "cmd == {:#x} || cmd == {:#x}"
                   .format(FIFREEZE, FITHAW))
            for event in EVENTS:
                _write(self.file("events", event, "enable"), "1")
        except BaseException:
            self.stop()
            raise
        return self

    def file(self, *parts):
        return os.path.join(self.path, *parts)

    def take(self):
        """The FIFREEZE/FITHAW calls recorded since the last take(), buffer cleared:
        [{"op": "freeze"|"thaw", "tid", "comm", "enter", "exit", "ret"}] by enter time."""
        with open(self.file("trace")) as handle:
            text = handle.read()
        _write(self.file("trace"), "")
        return parse(text)

    def stop(self):
        if not os.path.isdir(self.path):
            return
        for event in EVENTS:
            try:
                _write(self.file("events", event, "enable"), "0")
            except OSError:
                pass
        os.rmdir(self.path)


def parse(text):
    pending, calls = {}, []
    for line in text.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        tid, stamp = int(match.group("tid")), float(match.group("ts"))
        if match.group("args") is not None:
            cmd = CMD.search(match.group("args"))
            op = NAMES.get(int(cmd.group("cmd"), 16)) if cmd else None
            if op:
                pending[tid] = {"op": op, "tid": tid, "comm": match.group("comm").strip(),
                                "enter": stamp, "exit": None, "ret": None}
        elif tid in pending:
            call = pending.pop(tid)
            ret = int(match.group("ret"), 16)
            call["exit"], call["ret"] = stamp, ret - (1 << 64) if ret >= 1 << 63 else ret
            calls.append(call)
    calls.extend(pending.values())  # still in the kernel when the buffer was read
    return sorted(calls, key=lambda call: call["enter"])


def summary(calls):
    """The window as the kernel saw it (seconds, CLOCK_MONOTONIC), from successful calls:
    first FIFREEZE entered to last FITHAW returned; the freeze phase (first FIFREEZE
    entered to last returned); the thaw phase; each call's count and threads."""
    freezes = [c for c in calls if c["op"] == "freeze" and c["ret"] == 0]
    thaws = [c for c in calls if c["op"] == "thaw" and c["ret"] == 0]
    if not freezes or not thaws:
        return None
    first = min(c["enter"] for c in freezes)
    return {"window": max(c["exit"] for c in thaws) - first,
            "freeze": max(c["exit"] for c in freezes) - first,
            "thaw": max(c["exit"] for c in thaws) - min(c["enter"] for c in thaws),
            "first_freeze_at": first,
            "freezes": len(freezes), "thaws": len(thaws),
            "failed": len([c for c in calls if c["ret"] not in (0, None)]),
            "threads": sorted({"{}-{}".format(c["comm"], c["tid"]) for c in calls})}
