"""What every command line of the project shares: the --config and --json options and
the entry-point rule that user errors are one line, never a traceback.

A module of its own so that the subcommands (run, hooks) and xe-quiesce-host use the
same definitions without importing cli.py, which registers them.
"""
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


def run_main(command, prog_name):
    """Run a click command; a QuiesceError ends it with one line and exit status 1."""
    try:
        command(prog_name=prog_name)
    except QuiesceError as error:
        click.echo("{}: error: {}".format(prog_name, error), err=True)
        sys.exit(1)
