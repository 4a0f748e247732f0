"""`xe-quiesce run`: the daemon answering the host's quiesce requests over xenstore.

No click here: the daemon normally starts through cli_fast (click is 3-4 MiB of idle
memory); click's `run` command (cli_commands.py) calls the same serve(). The daemon's
modules (xenstore, the state machine) load when it runs, not when the command line loads.
"""
from .config import load_config
from .errors import QuiesceError


def serve(uri=None, domain_path=None, config_file=None):
    """Serve quiesce requests until SIGTERM/SIGINT; a QuiesceError is the admin's."""
    from .daemon import Daemon
    from .xenstore import XenstoreClient, XenstoreError

    config = load_config(config_file)
    try:
        client = XenstoreClient(uri or config.xenstore.uri, timeout=config.xenstore.request_timeout)
    except XenstoreError as error:
        raise QuiesceError(str(error))
    daemon = Daemon(config, client, domain_path or config.xenstore.domain_path or None)
    release_freed_memory()
    daemon.run()


def release_freed_memory():
    """Give the heap that start-up freed (import-time temporaries) back to the kernel: the
    daemon idles for the guest's lifetime. glibc's malloc_trim; a no-op elsewhere (musl)."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass
