"""The `xe-quiesce` entry point (`python -m xe_quiesce.cli`, the console script).

It imports nothing heavy itself: `thaw` through the daemon and the daemon itself (`run`)
are served without click (cli/fast.py), everything else by click's commands
(cli/commands.py).
"""
import sys


def main():
    from .fast import fast_run, fast_thaw

    for fast in (fast_thaw, fast_run):
        status = fast(sys.argv[1:])
        if status is not None:
            sys.exit(status)
    from .commands import main as commands_main

    commands_main()


if __name__ == "__main__":
    main()
