"""What every command line of the project shares: the --config and --json options and
the entry-point rule that user errors are one line, never a traceback.

A module of its own so that the subcommands (run, hooks) and xe-quiesce-host use the
same definitions without importing cli.py, which registers them.
"""
import logging
import os
import sys

import click

from .config import ENV_VAR
from .errors import QuiesceError, RootRequired


def config_option(command):
    return click.option(
        "--config", "config_file", metavar="FILE", envvar=ENV_VAR,
        help="Configuration file (default /etc/xe-quiesce/xe-quiesce.conf, or ${}).".format(
            ENV_VAR))(command)


def json_option(command):
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON.")(command)


def require_root():
    """Commands that freeze, thaw, or read the run directory (0700, root's)."""
    if os.geteuid() != 0:
        raise RootRequired()


def run_main(command, prog_name):
    """Run a click command; an error ends it with one line and exit status 1.

    A QuiesceError is ours and says what to do. Anything else is a fault of ours or of
    the system: still one line (its traceback is logged at debug level, shown by -v).
    """
    try:
        command(prog_name=prog_name)
    except QuiesceError as error:
        click.echo("{}: {}{}".format(prog_name, error.label, error), err=True)
        sys.exit(1)
    except Exception as error:
        logging.getLogger(prog_name).debug("unexpected error", exc_info=True)
        click.echo("{}: error: {}: {}".format(prog_name, type(error).__name__, error),
                   err=True)
        sys.exit(1)
