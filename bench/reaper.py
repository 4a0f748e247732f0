"""Run a command as a child subreaper that reaps at once, as systemd (PID 1) does.

Usage: python -m bench.reaper COMMAND...
The daemon's deadline guard is double-forked; when it exits, the session waits until
the zombie is reaped (procs.wait_gone). This machine's PID 1 reaps orphans only every
second or two, which real guests' init systems do not; running each daemon under this
reaper keeps that artefact out of the measurements. SIGTERM and SIGINT are passed on;
the exit status is the command's.
"""
import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv):
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("prctl(PR_SET_CHILD_SUBREAPER) failed")
    child = os.fork()
    if child == 0:
        os.execvp(argv[0], argv)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda num, _frame: os.kill(child, num))
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            raise SystemExit(1)
        if pid == child:
            raise SystemExit(os.waitstatus_to_exitcode(status) & 0xFF)


if __name__ == "__main__":
    main(sys.argv[1:])
