"""The errors that end a command with one clear line instead of a traceback.

Click-free: the click-free paths (xe_quiesce/cli/fast.py) end with the same lines as
click's commands (entry.run_main).
"""
import os


class QuiesceError(Exception):
    """An error the admin can act on; its message is printed as is, after `label`."""

    label = "error: "


class ConfigError(QuiesceError):
    """A configuration file or value that cannot be used."""


class FreezeError(QuiesceError):
    """A filesystem could not be frozen; whatever this session froze is thawed again."""


class BusyError(QuiesceError):
    """Another quiesce session owns the guest's filesystems."""


class HookError(QuiesceError):
    """A hook was refused, failed or ran out of time; the hooks that ran are aborted."""


class RootRequired(QuiesceError):
    """The command freezes, thaws or reads the root-only run directory."""

    label = ""

    def __init__(self):
        QuiesceError.__init__(self, "must be run as root")


def require_root():
    """Commands that freeze, thaw, or read the run directory (0700, root's)."""
    if os.geteuid() != 0:
        raise RootRequired()


def error_line(prog_name, error):
    """The one line that ends a command on `error`: ours (a QuiesceError) says what to do;
    anything else is a fault of ours or of the system, named by its type."""
    if isinstance(error, QuiesceError):
        return "{}: {}{}".format(prog_name, error.label, error)
    return "{}: error: {}: {}".format(prog_name, type(error).__name__, error)
