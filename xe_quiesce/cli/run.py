"""`xe-quiesce run`: the daemon answering the host's quiesce requests over xenstore.

The daemon's modules (xenstore, HTTPS, the state machine) are imported when `run` runs,
not when the command line loads: `xe-quiesce thaw` starts inside the frozen window.
"""
import logging
import os
import sys

import click

from ..config import load_config
from ..errors import QuiesceError
from .options import config_option, require_root

# Exit status when the guest has no xenbus device (a Xen HVM guest without PV drivers,
# or not Xen at all): LSB's "not configured". The unit lists it in
# RestartPreventExitStatus=, so systemd does not restart into the same failure.
NO_XENBUS_STATUS = 6


@click.command()
@click.option("--xenstore", "uri", metavar="URI",
              help="xenbus (default), xenbus:PATH or unix:PATH (a dom0 xenstored socket); "
                   "default: [xenstore] uri.")
@click.option("--domain-path", metavar="PATH",
              help="Use this domain home instead of reading `domid` (needed on a dom0 "
                   "socket); default: [xenstore] domain-path.")
@config_option
def run(uri, domain_path, config_file):
    """Serve quiesce requests: the host's over xenstore, Xen Orchestra's sync hook, and
    the local CLI's over the control socket (systemd Type=notify daemon).

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
        Daemon(config, client, domain_path or config.xenstore.domain_path or None).run()
    finally:
        lock.release()
