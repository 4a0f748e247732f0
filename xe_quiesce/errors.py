"""The errors that end a command with one clear line instead of a traceback."""


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
