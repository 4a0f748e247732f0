"""What the guest's commands share: the --config and --json options, the journal a command
reads (reconciled first), whether a stream is a file on a frozen filesystem.

A module of its own so that the subcommands (run, hooks) use the same definitions
without importing cli/main.py, which registers them. The entry-point rule (one line,
never a traceback) is entry.py's, shared with xe-quiesce-host.
"""
import os
import stat

import click

from ..config import ENV_VAR


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
    from ..core.journal import Journal

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


def on_frozen_file(stream, mount_points):
    """Whether `stream` is a regular file on one of these frozen filesystems (stat is a
    read: it does not wait for the thaw)."""
    try:
        info = os.fstat(stream.fileno())
        return stat.S_ISREG(info.st_mode) and any(
            os.stat(point).st_dev == info.st_dev for point in mount_points)
    except (AttributeError, OSError, ValueError):  # the freeze has happened: never fail it
        return False
