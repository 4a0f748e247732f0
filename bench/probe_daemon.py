"""`xe-quiesce run`, unchanged, plus a record of the agent's own timestamps per session.

Usage: XEQ_BENCH_TIMESTAMPS=FILE python -m bench.probe_daemon run ...
After each thaw, one JSON line is appended to FILE: every filesystem's freeze_start,
frozen_at, thaw_start and thawed_at (the freezer's own FsState fields), and when the
session's steps ran (session start, open, syncfs pass, guard fork, freeze, thaw), so the
report can say where request->frozen goes. All are time.monotonic(): CLOCK_MONOTONIC is
system-wide, so the bench compares them with its own request times. The line is written
after the last FITHAW (outside the frozen window) to a file on the bench's tmpfs; the
wrappers add two clock reads per step.
"""
import functools
import json
import os
import time

from xe_quiesce.cli import main as cli
from xe_quiesce.core import freezer, guard, session

FIELDS = ("freeze_start", "frozen_at", "thaw_start", "thawed_at")
_steps = {}


def _timed(name, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.monotonic()
        try:
            return function(*args, **kwargs)
        finally:
            _steps[name] = (started, time.monotonic())
    return wrapper


def install(path):
    start = session.QuiesceSession.start

    @functools.wraps(start)
    def session_start(self, *args, **kwargs):
        _steps.clear()
        _steps["session"] = (time.monotonic(), None)
        return start(self, *args, **kwargs)

    session.QuiesceSession.start = session_start
    for name in ("open", "sync", "freeze"):
        setattr(freezer.Freezer, name, _timed(name, getattr(freezer.Freezer, name)))
    guard.Guard.start = classmethod(_timed("guard", guard.Guard.start.__func__))
    thaw = _timed("thaw", freezer.Freezer.thaw)

    def thaw_and_record(self):
        problems = thaw(self)
        line = {"steps": dict(_steps),
                "fs": [dict({"mount_point": s.mount_point, "status": s.status},
                            **{field: getattr(s, field) for field in FIELDS})
                       for s in self.states]}
        with open(path, "a") as handle:
            handle.write(json.dumps(line) + "\n")
        return problems

    freezer.Freezer.thaw = thaw_and_record


if __name__ == "__main__":
    install(os.environ["XEQ_BENCH_TIMESTAMPS"])
    cli.main()
