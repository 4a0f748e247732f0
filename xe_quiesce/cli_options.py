"""What every command line of the project shares: the --config and --json options and
the entry-point rule that user errors are one line, never a traceback.

A module of its own so that the subcommands (run, hooks) and xe-quiesce-host use the
same definitions without importing cli.py, which registers them.
"""
import os
import stat
import sys

import click

from .config import ENV_VAR
from .errors import QuiesceError


def config_option(command):
    return click.option(
        "--config", "config_file", metavar="FILE", envvar=ENV_VAR,
        help="Configuration file (default /etc/xe-quiesce/xe-quiesce.conf, or ${}).".format(
            ENV_VAR))(command)


def json_option(command):
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON.")(command)


def journal_for(config, reconcile=True):
    """The journal; leftovers of a dead session are reconciled first, as on every start."""
    from .journal import Journal

    journal = Journal(config.state.run_dir)
    if reconcile:
        try:
            closed = journal.reconcile()
        except PermissionError:
            closed = None  # not root: nothing of ours can be frozen by this user
        if closed:
            click.echo("xe-quiesce: earlier session {} ({}): {}".format(
                closed["session"], closed.get("trigger"), closed["message"]), err=True)
    return journal


def check_timeout(config, timeout):
    """--timeout of freeze and frozen: within (0, [freeze] max-frozen]."""
    if timeout is not None and not 0 < timeout <= config.freeze.max_frozen:
        raise QuiesceError("--timeout must be between 0 and [freeze] max-frozen ({:g} s)".format(
            config.freeze.max_frozen))


def on_frozen_file(stream, mount_points):
    """Whether `stream` is a regular file on one of these frozen filesystems (stat is a
    read: it does not wait for the thaw)."""
    try:
        info = os.fstat(stream.fileno())
        return stat.S_ISREG(info.st_mode) and any(
            os.stat(point).st_dev == info.st_dev for point in mount_points)
    except (AttributeError, OSError, ValueError):  # the freeze has happened: never fail it
        return False


def run_main(command, prog_name):
    """Run a click command; a QuiesceError ends it with one line and exit status 1."""
    try:
        command(prog_name=prog_name)
    except QuiesceError as error:
        click.echo("{}: error: {}".format(prog_name, error), err=True)
        sys.exit(1)
