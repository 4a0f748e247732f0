"""`xe-quiesce run` that SIGKILLs itself at one step of the host's conversation.

The injected fault of the fault suite: with XE_QUIESCE_CRASH_AT=N the daemon dies, as
by `kill -9`, just before it executes the N-th command of its first request (0 is the
journal record made before C/action is deleted). XE_QUIESCE_STEPS names a file that
gets one line per command executed, so a clean run tells how many steps there are.
Everything else is the real command line.
"""
import os
import signal

from xe_quiesce.cli import main as cli
from xe_quiesce.triggers import conversation as cv
from xe_quiesce.triggers.xapi import XapiTrigger


def describe(command):
    path = getattr(command, "path", None)
    return type(command).__name__ + (" " + path if path else "")


def install(crash_at, steps_path):
    execute = XapiTrigger.execute
    counted = []

    def faulty(agent, command):
        if not counted and isinstance(command, cv.Record) and command.request \
                and command.request["report"] is None:
            counted.append(True)  # the request's first step: journaled, not yet acked
        if counted:
            step = len(counted) - 1
            if steps_path:
                with open(steps_path, "a") as handle:
                    handle.write("{} {}\n".format(step, describe(command)))
            if step == crash_at:
                os.kill(os.getpid(), signal.SIGKILL)
            counted.append(True)
        return execute(agent, command)

    XapiTrigger.execute = faulty


if __name__ == "__main__":
    install(int(os.environ.get("XE_QUIESCE_CRASH_AT", "-1")),
            os.environ.get("XE_QUIESCE_STEPS"))
    cli.main()
