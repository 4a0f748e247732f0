"""`xe-quiesce run`: the daemon answering the host's quiesce requests over xenstore.

No click here: the daemon normally starts through cli/fast.py (click is 3-4 MiB of idle
memory); click's `run` command (cli/commands.py) calls the same serve(). The daemon's
modules (xenstore, the state machine) load when it runs, not when the command line loads.
"""
import logging
import os
import sys

from ..config import load_config
from ..errors import QuiesceError, require_root

# Exit status when the guest has no xenbus device (a Xen HVM guest without PV drivers,
# or not Xen at all): LSB's "not configured". The unit lists it in
# RestartPreventExitStatus=, so systemd does not restart into the same failure.
NO_XENBUS_STATUS = 6


def serve(uri=None, domain_path=None, config_file=None):
    """Serve quiesce requests until SIGTERM/SIGINT; a QuiesceError is the admin's.

    A session left by a crashed daemon is reconciled at start.
    """
    from ..core.journal import Journal
    from ..daemon import Daemon
    from ..triggers.control import DaemonLock
    from ..xenstore import XENBUS_DEVICES, XenstoreClient, XenstoreError

    require_root()
    config = load_config(config_file)
    uri = uri or config.xenstore.uri
    if uri == "xenbus" and not any(os.path.exists(path) for path in XENBUS_DEVICES):
        logging.getLogger(__name__).error(
            "no xenbus device (%s): not a Xen guest with PV drivers, nothing to serve; "
            "exiting with status %d (not restarted)", ", ".join(XENBUS_DEVICES),
            NO_XENBUS_STATUS)
        sys.exit(NO_XENBUS_STATUS)
    try:
        client = XenstoreClient(uri, timeout=config.xenstore.request_timeout)
    except XenstoreError as error:
        raise QuiesceError(str(error))
    Journal(config.state.run_dir).ensure_dir()
    lock = DaemonLock(config.state.run_dir).acquire()  # before any socket or port
    try:
        daemon = Daemon(config, client, domain_path or config.xenstore.domain_path or None)
        release_freed_memory()
        daemon.run()
    finally:
        lock.release()


def release_freed_memory():
    """Give the heap that start-up freed (import-time temporaries) back to the kernel: the
    daemon idles for the guest's lifetime. glibc's malloc_trim; a no-op elsewhere (musl)."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass
